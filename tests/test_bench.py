"""The benchmark's pieces run and report what they claim (speed itself is not asserted here)."""

from __future__ import annotations

import pytest
import torch

from course_utils.build.bench import (
    TimedRun,
    loader_table,
    peak_memory,
    print_time_to_accuracy,
    time_to_accuracy_table,
)
from course_utils.speedrun import Recipe

pytestmark = pytest.mark.slow  # trains


def test_loader_table_measures_each_variant_against_the_original_pipeline() -> None:
    """Every variant gets a positive rate; speedups are relative to the first (original) row."""
    rows = loader_table(torch.device("cpu"), n_batches=2)
    assert rows[0].variant.startswith("original") and rows[0].batch_size == 64
    assert rows[0].speedup_vs_original == 1.0
    assert len(rows) >= 5 and all(r.images_per_s > 0 for r in rows)
    for r in rows:
        assert abs(r.speedup_vs_original - r.images_per_s / rows[0].images_per_s) < 1e-9
        assert abs(r.seconds_per_epoch * r.images_per_s - 54_000) < 1e-6


def test_peak_memory_reports_rss_in_mib() -> None:
    """ru_maxrss is KiB on Linux: a Python process with torch loaded uses 100 MiB to 20 GiB."""
    assert 100 < peak_memory(torch.device("cpu"))["peak_rss_mib"] < 20_000


def test_time_to_accuracy_table_reports_each_seed_the_mean_and_the_verdict() -> None:
    """Tiny settings (512 images, a 4-channel net): the original recipe runs one epoch (budget
    0 s), the fast recipe once per seed with a validation checkpoint per epoch and the test set
    once at the end, the mean is the mean of the seeds, and a run this small misses the 93%
    target by its measured gap."""
    table = time_to_accuracy_table(
        torch.device("cpu"), (0, 1), Recipe(epochs=2, width=4), original_seconds=0.0, train_size=512
    )
    runs = table["runs"]
    assert [(r["recipe"], r["seed"]) for r in runs] == [
        ("original", 0),
        ("fast recipe", 0),
        ("fast recipe", 1),
    ]
    assert len(runs[0]["curve"]) == 1
    for run in runs[1:]:
        assert [c["epoch"] for c in run["curve"]] == [1, 2]
        # the curve is validation (6,000 images), the end is test (10,000): the two differ
        assert run["curve"][-1]["accuracy"] != run["test_accuracy"]
        assert all(round(c["accuracy"] * 6000, 6).is_integer() for c in run["curve"])
        assert round(run["test_accuracy"] * 10_000, 6).is_integer()
        assert 0 < run["curve"][0]["seconds"] < run["curve"][1]["seconds"] == run["seconds"]
    accuracies = [r["test_accuracy"] for r in runs[1:]]
    assert table["fast_mean_accuracy"] == pytest.approx(sum(accuracies) / 2)
    assert table["fast_mean_seconds"] == pytest.approx(sum(r["seconds"] for r in runs[1:]) / 2)
    assert table["target"]["met"] is False
    gap = 100 * (table["fast_mean_accuracy"] - 0.93)
    assert table["target"]["accuracy_gap_points"] == pytest.approx(gap)
    print_time_to_accuracy(table)  # the printed table handles unreached targets


def test_seconds_to_is_the_first_checkpoint_at_the_target() -> None:
    curve = [{"seconds": 1.0, "accuracy": 0.90}, {"seconds": 2.0, "accuracy": 0.93}]
    run = TimedRun("fast recipe", 0, 2.0, 0.93, curve + [{"seconds": 3.0, "accuracy": 0.95}])
    assert run.seconds_to(0.93) == 2.0 and run.seconds_to(0.89) == 1.0
    assert run.seconds_to(0.99) is None
