"""``course_utils.experiments``: fair multi-seed runs, summaries, the paired comparison and its
calibration, epochs-to-X."""

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
    CONFIDENCE,
    Variant,
    compare,
    epochs_to,
    false_positive_rate,
    format_summary,
    paired_comparison,
    rejection_rate,
    run_experiment,
    summarize,
)
from course_utils.plots import plot_curves

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


def test_a_seed_gives_paired_variants_the_same_start() -> None:
    """What pairing by seed shares: variants that differ only in layers without parameters
    (activation, dropout) start from identical weights; BatchNorm drops the conv biases, so
    only conv1's weights (drawn before the first difference) match."""
    from course_utils.train import seed_everything

    def start(model: dict) -> dict[str, torch.Tensor]:
        seed_everything(3)
        return Variant("v", model).build().state_dict()

    plain = start({})
    for same in ({"activation": "elu"}, {"dropout": 0.5, "conv_dropout": 0.2}):
        other = start(same)
        assert all(torch.equal(plain[k], other[k]) for k in plain), same
    bn = start({"norm": "batch"})
    assert torch.equal(plain["conv1.weight"], bn["conv1.weight"])
    assert not torch.equal(plain["conv2.weight"], bn["conv2.weight"])


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


def test_compare_pairs_by_seed_and_reports_the_interval() -> None:
    """Breaks if compare pairs rows by position instead of seed, or the interval is not the
    paired Student-t interval (here by hand: mean 0.1, sd 0.005, t(0.975, 2) = 4.303)."""
    frame = pd.DataFrame(
        {
            "variant": ["a", "a", "a", "b", "b", "b"],
            "seed": [0, 1, 2, 2, 0, 1],  # b's rows in another order
            "acc": [0.90, 0.91, 0.905, 0.80, 0.805, 0.80],
        }
    )
    c = compare(frame, "a", "b", "acc")
    diffs = np.array([0.90 - 0.805, 0.91 - 0.80, 0.905 - 0.80])
    half = 4.302653 * diffs.std(ddof=1) / math.sqrt(3)
    assert c.n == 3 and c.diff == pytest.approx(diffs.mean())
    assert c.interval == pytest.approx((diffs.mean() - half, diffs.mean() + half), abs=1e-6)
    assert c.mean_a == pytest.approx(0.905) and c.mean_b == pytest.approx(0.80166, abs=1e-4)
    assert c.beyond_noise
    assert c.sentence() == (
        "a 90.5% vs b 80.2%; paired difference (a − b) +10.3 points (95% interval +8.4 to "
        "+12.2 points, n = 3 seeds): beyond seed noise in favour of a"
    )


def test_pairing_removes_the_seed_effect() -> None:
    """The seeds differ far more than the arms (the arms' ranges overlap), but within every seed
    a is ahead by 1 to 1.5 points: paired by seed, that is beyond noise."""
    frame = runs({"a": [0.51, 0.71, 0.91, 0.61], "b": [0.50, 0.695, 0.90, 0.60]})
    c = compare(frame, "a", "b", "acc")
    assert c.beyond_noise and c.low > 0
    assert c.sentence().endswith("beyond seed noise in favour of a")


def test_sentence_verdicts_and_formats() -> None:
    noisy = compare(runs({"a": [0.90, 0.80], "b": [0.86, 0.83]}), "a", "b", "acc")
    assert not noisy.beyond_noise and noisy.low < 0 < noisy.high
    assert noisy.sentence().endswith("not resolved with 2 seeds (the interval includes 0)")
    loss = compare(runs({"a": [0.80, 0.81, 0.805], "b": [0.90, 0.915, 0.905]}), "a", "b", "acc")
    assert loss.sentence().endswith("in favour of b")
    assert loss.sentence(lower_is_better=True).endswith("in favour of a")
    text = loss.sentence(lambda v: f"{v:.3f}", lower_is_better=True)
    assert text.startswith("a 0.805 vs b 0.907; paired difference (a − b) -0.102 (95% interval")
    assert "n = 3 seeds" in text and "points" not in text
    for c in (noisy, loss):
        words = c.sentence().lower()
        assert "real difference" not in words and "no difference" not in words


def test_an_interval_of_no_width_is_not_beyond_noise() -> None:
    """Whole-epoch counts can give every seed the same difference; the t-interval then has no
    width and measured no seed noise (four equal signs: a sign test's p is 0.125)."""
    faster = compare(runs({"a": [2.0, 1.0, 2.0, 3.0], "b": [3.0, 2.0, 3.0, 4.0]}), "a", "b", "acc")
    assert faster.interval == (-1.0, -1.0) and not faster.beyond_noise
    assert faster.sentence(lower_is_better=True).endswith(
        "not resolved with 4 seeds (every seed gave the same difference, so the interval has "
        "no width and measures no seed noise)"
    )


def test_compare_refuses_what_it_cannot_pair() -> None:
    with pytest.raises(ValueError, match="two seeds"):
        compare(runs({"a": [0.9], "b": [0.8]}), "a", "b", "acc")
    with pytest.raises(ValueError, match="same seeds"):
        compare(runs({"a": [0.9, 0.8], "b": [0.8, 0.7, 0.6]}), "a", "b", "acc")
    shifted = runs({"a": [0.9, 0.8], "b": [0.8, 0.7]}).assign(seed=[0, 1, 1, 2])
    with pytest.raises(ValueError, match=r"same seeds.*\[0, 1\] and \[1, 2\]"):
        compare(shifted, "a", "b", "acc")
    with pytest.raises(ValueError, match="one row per run"):
        compare(pd.concat([runs({"a": [1, 2], "b": [1, 2]})] * 2), "a", "b", "acc")
    with pytest.raises(ValueError, match="finite"):
        compare(runs({"a": [0.9, math.nan], "b": [0.8, 0.7]}), "a", "b", "acc")
    with pytest.raises(KeyError, match="'c'"):
        compare(runs({"a": [0.9, 0.8], "b": [0.8, 0.7]}), "a", "c", "acc")
    with pytest.raises(KeyError, match="seed"):
        compare(runs({"a": [0.9, 0.8], "b": [0.8, 0.7]}).drop(columns="seed"), "a", "b", "acc")


# The calibration of the rule. The chapters run 3 to 5 seeds (quick mode: 2 or 3), chapter 6
# and the appendix a few; every count from 2 to 10 is simulated. Monte-Carlo margin: 3 standard
# errors of a rate of 5% over N_SIM.
SEED_COUNTS = range(2, 11)
N_SIM = 4000
FP_BOUND = 1 - CONFIDENCE
FP_MARGIN = 3 * math.sqrt(FP_BOUND * (1 - FP_BOUND) / N_SIM)


@pytest.mark.parametrize("shared_sd", [0.0, 3.0], ids=["independent", "shared-seed-effect"])
@pytest.mark.parametrize("n_seeds", SEED_COUNTS)
def test_false_positive_rate_is_at_most_5_percent(n_seeds: int, shared_sd: float) -> None:
    """Two arms from one distribution, with and without a per-seed effect common to both arms
    (a lucky seed is lucky for both): "beyond seed noise" in at most 5% of comparisons, plus
    the Monte-Carlo margin. The old rule (non-overlapping ranges and a gap above twice the
    larger std) fails here: 12.9% at 2 seeds."""
    rate = false_positive_rate(n_seeds, n_sim=N_SIM, seed=n_seeds, shared_sd=shared_sd)
    assert rate <= FP_BOUND + FP_MARGIN, f"{rate:.2%} false positives with {n_seeds} seeds"


@pytest.mark.parametrize("shared_sd", [0.0, 3.0], ids=["independent", "shared-seed-effect"])
@pytest.mark.parametrize("n_seeds", [3, 4, 5])
def test_power_on_a_clear_effect(n_seeds: int, shared_sd: float) -> None:
    """A clear effect, 5 noise sds (3.5 sds of a paired difference), is found in at least 80% of
    experiments with the chapters' 3 to 5 seeds, also when a per-seed effect 3× the noise moves
    both arms (pairing cancels it; the old, unpaired rule found it in under 1% of them)."""
    power = rejection_rate(n_seeds, 5.0, shared_sd=shared_sd, n_sim=2000, seed=n_seeds)
    assert power >= 0.8, f"power {power:.1%} with {n_seeds} seeds"


def test_the_simulation_runs_the_procedure_that_compare_runs() -> None:
    """Breaks if compare and the simulated rule part ways: on random frames (rows shuffled,
    arbitrary seed labels) compare gives the comparison of the seed-aligned arrays."""
    rng = np.random.default_rng(0)
    for trial in range(50):
        n = int(rng.integers(2, 9))
        seeds = rng.choice(1000, n, replace=False)
        va, vb = rng.normal(0, 1, n), rng.normal(0.5, 1, n)
        frame = pd.DataFrame(
            {"variant": ["x"] * n + ["y"] * n, "seed": [*seeds, *seeds], "v": [*va, *vb]}
        ).sample(frac=1, random_state=trial)
        got, want = compare(frame, "x", "y", "v"), paired_comparison(va, vb, "x", "y", "v")
        assert (got.a, got.b, got.n, got.beyond_noise) == (want.a, want.b, n, want.beyond_noise)
        numbers = [got.mean_a, got.mean_b, got.diff, got.low, got.high]
        assert numbers == pytest.approx([want.mean_a, want.mean_b, want.diff, *want.interval])


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
