"""The benchmark's pieces run and report what they claim (speed itself is not asserted here)."""

from __future__ import annotations

import torch

from course_utils.build.bench import loader_table, peak_memory


def test_loader_table_measures_each_variant_against_the_seed_pipeline() -> None:
    """Every variant gets a positive rate; speedups are relative to the first (seed) row."""
    rows = loader_table(torch.device("cpu"), n_batches=2)
    assert rows[0].variant.startswith("seed") and rows[0].batch_size == 64
    assert rows[0].speedup_vs_seed == 1.0
    assert len(rows) >= 5 and all(r.images_per_s > 0 for r in rows)
    for r in rows:
        assert abs(r.speedup_vs_seed - r.images_per_s / rows[0].images_per_s) < 1e-9
        assert abs(r.seconds_per_epoch * r.images_per_s - 54_000) < 1e-6


def test_peak_memory_reports_rss_in_mib() -> None:
    """ru_maxrss is KiB on Linux: a Python process with torch loaded uses 100 MiB to 20 GiB."""
    assert 100 < peak_memory(torch.device("cpu"))["peak_rss_mib"] < 20_000
