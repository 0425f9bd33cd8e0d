"""``course_utils.experiments``: fair multi-seed runs, summaries, the noise verdict, epochs-to-X."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch

from course_utils.data import FashionMNISTTensors
from course_utils.experiments import (
    Variant,
    compare,
    epochs_to,
    format_summary,
    plot_curves,
    run_experiment,
    summarize,
)

TINY = {"width": 4, "hidden": 8}


def fake_split(n: int, seed: int) -> FashionMNISTTensors:
    g = torch.Generator().manual_seed(seed)
    return FashionMNISTTensors(
        torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g),
        torch.randint(0, 10, (n,), generator=g),
    )


@pytest.fixture(scope="module")
def result():
    variants = [
        Variant("plain", TINY, tags={"norm": "none"}),
        Variant("bn", {**TINY, "norm": "batch"}, tags={"norm": "batch"}),
    ]
    return run_experiment(
        variants,
        [0, 1],
        fake_split(96, 0),
        fake_split(40, 1),
        epochs=2,
        batch_size=32,
        extra_eval={"train_eval": fake_split(96, 0)},
        keep_models=True,
        progress=False,
    )


def test_tidy_tables_have_one_row_per_run_and_epoch(result) -> None:
    e = result.epochs
    assert len(e) == 2 * 2 * 2
    for col in [
        "variant",
        "seed",
        "epoch",
        "lr",
        "norm",
        "val_acc",
        "train_eval_acc",
        "epoch_time",
    ]:
        assert col in e.columns
    assert len(result.steps) == 2 * 2 * 2 * 3  # 96 images / 32 = 3 steps per epoch
    assert len(result.final()) == 4 and set(result.final()["epoch"]) == {2}
    assert set(result.models) == {("plain", 0), ("bn", 0), ("plain", 1), ("bn", 1)}


def test_same_seed_same_run_different_seed_different_run(result) -> None:
    """Breaks if runs are not seeded per (variant, seed): a rerun must reproduce exactly."""
    again = run_experiment(
        [Variant("plain", TINY)],
        [1, 0],
        fake_split(96, 0),
        fake_split(40, 1),
        epochs=2,
        batch_size=32,
        progress=False,
    )
    for seed in (0, 1):
        plain = result.steps[(result.steps["variant"] == "plain") & (result.steps["seed"] == seed)]
        a = plain["loss"].to_numpy()
        b = again.steps[again.steps["seed"] == seed]["loss"].to_numpy()
        np.testing.assert_array_equal(a, b)
    s0 = result.steps.query("variant == 'plain' and seed == 0")["loss"].to_numpy()
    s1 = result.steps.query("variant == 'plain' and seed == 1")["loss"].to_numpy()
    assert not np.array_equal(s0, s1)


def test_variants_of_a_seed_see_the_same_first_batch() -> None:
    """Two identical variants under one seed give identical runs (same init, same data order)."""
    r = run_experiment(
        [Variant("a", TINY), Variant("b", TINY)],
        [3],
        fake_split(64, 0),
        fake_split(20, 1),
        epochs=1,
        batch_size=16,
        progress=False,
    )
    a, b = (r.steps.query(f"variant == '{v}'")["loss"].to_numpy() for v in "ab")
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"variants": []}, "at least one"),
        ({"seeds": [0, 0]}, "distinct"),
        ({"epochs": 0}, "at least 1"),
        ({"extra_eval": {"val": fake_split(8, 0)}}, "clash"),
        ({"variants": [Variant("x"), Variant("x")]}, "distinct"),
    ],
)
def test_run_experiment_rejects_bad_input(kwargs: dict, match: str) -> None:
    args = {
        "variants": [Variant("x", TINY)],
        "seeds": [0],
        "train": fake_split(16, 0),
        "val": fake_split(8, 1),
        "epochs": 1,
        "progress": False,
    }
    with pytest.raises(ValueError, match=match):
        run_experiment(**{**args, **kwargs})


def test_variant_validates() -> None:
    with pytest.raises(ValueError, match="optimizer"):
        Variant("x", optimizer="rmsprop")
    with pytest.raises(ValueError, match="lr"):
        Variant("x", lr=0)


def runs(values: dict[str, list[float]]) -> pd.DataFrame:
    rows = [
        {"variant": k, "seed": i, "acc": v} for k, vs in values.items() for i, v in enumerate(vs)
    ]
    return pd.DataFrame(rows)


def test_summarize_and_format() -> None:
    frame = runs({"a": [0.90, 0.92], "b": [0.80, 0.84, 0.82]})
    s = summarize(frame, "acc")
    assert list(s.index) == ["a", "b"]
    assert s.loc["a", ("acc", "mean")] == pytest.approx(0.91)
    assert s.loc["b", ("acc", "std")] == pytest.approx(0.02)
    assert s.loc["b", ("acc", "n")] == 3
    text = format_summary(s)
    assert text.loc["a", "acc"] == "91.00 ± 1.41  [90.00–92.00]"
    assert list(text["seeds"]) == [2, 3]


def test_summarize_refuses_several_rows_per_run() -> None:
    frame = pd.concat([runs({"a": [1, 2]}), runs({"a": [3, 4]})])
    with pytest.raises(ValueError, match="one row per run"):
        summarize(frame, "acc")
    with pytest.raises(KeyError, match="nope"):
        summarize(runs({"a": [1, 2]}), "nope")


def test_compare_separates_clear_from_noisy_differences() -> None:
    clear = compare(runs({"a": [0.90, 0.91, 0.905], "b": [0.80, 0.81, 0.805]}), "a", "b", "acc")
    assert clear.beyond_noise and clear.diff == pytest.approx(0.1)
    assert clear.sentence() == (
        "a 90.5% ± 0.5% vs b 80.5% ± 0.5%: a real difference in favour of a "
        "(every a seed beat every b seed)"
    )
    noisy = compare(runs({"a": [0.90, 0.80], "b": [0.86, 0.83]}), "a", "b", "acc")
    assert noisy.ranges_overlap and not noisy.beyond_noise
    assert "within seed noise" in noisy.sentence()
    # Separated ranges but a gap smaller than twice the spread: still noise.
    close = compare(runs({"a": [0.90, 0.95], "b": [0.85, 0.899]}), "a", "b", "acc")
    assert not close.ranges_overlap and not close.beyond_noise
    assert "within seed noise (every a seed beat every b seed, but" in close.sentence()
    # A mean gap above twice the spread, but ranges that touch (a's best = b's worst): the
    # rule also needs every seed of one variant to beat every seed of the other.
    touching = compare(runs({"a": [0.0, 0.0, 1.0], "b": [1.0, 2.0, 2.0]}), "a", "b", "acc")
    assert abs(touching.diff) > 2 * touching.spread
    assert touching.ranges_overlap and not touching.beyond_noise
    assert touching.sentence().endswith("within seed noise (the seeds' ranges overlap)")
    flipped = compare(runs({"a": [0.80, 0.81, 0.805], "b": [0.90, 0.91, 0.905]}), "a", "b", "acc")
    assert flipped.beyond_noise and "in favour of b" in flipped.sentence()
    loss = compare(runs({"a": [0.80, 0.81, 0.805], "b": [0.90, 0.91, 0.905]}), "a", "b", "acc")
    assert "in favour of a (every a seed" in loss.sentence(lower_is_better=True)
    assert loss.sentence(lambda v: f"{v:.3f}").startswith("a 0.805 ± 0.005 vs b 0.905")


def test_compare_needs_two_seeds_and_known_names() -> None:
    with pytest.raises(ValueError, match="two seeds"):
        compare(runs({"a": [0.9], "b": [0.8, 0.7]}), "a", "b", "acc")
    with pytest.raises(KeyError, match="'c'"):
        compare(runs({"a": [0.9, 0.8], "b": [0.8, 0.7]}), "a", "c", "acc")


def test_epochs_to_is_first_epoch_at_or_above_threshold() -> None:
    rows = []
    for seed, curve in enumerate([[0.5, 0.8, 0.9], [0.8, 0.7, 0.95], [0.1, 0.2, 0.3]]):
        rows += [
            {"variant": "v", "seed": seed, "epoch": e + 1, "val_acc": a}
            for e, a in enumerate(curve)
        ]
    out = epochs_to(pd.DataFrame(rows).sample(frac=1, random_state=0), 0.8)
    assert out["epochs_to"].iloc[:2].tolist() == [2.0, 1.0]
    assert math.isnan(out["epochs_to"].iloc[2])


def test_plot_curves_draws_mean_and_range(result) -> None:
    fig = plot_curves(result.epochs, "val_acc", title="t")
    ax = fig.axes[0]
    assert len(ax.lines) == 2 and len(ax.collections) == 2
    assert ax.get_xlabel() == "epoch" and ax.get_title() == "t"
    plain = result.epochs.query("variant == 'plain'").pivot_table(
        index="epoch", columns="seed", values="val_acc"
    )
    np.testing.assert_allclose(ax.lines[0].get_ydata(), plain.mean(axis=1))
    matplotlib.pyplot.close(fig)
