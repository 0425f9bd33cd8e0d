"""Multi-seed comparisons: run model variants × seeds fairly, then summarise, compare and plot.

A *run* is one variant trained with one seed. For a given seed every variant gets the same
initialisation seed (``seed_everything(seed)`` right before the model is built) and the same
order of training batches (a :class:`~course_utils.data.TensorLoader` seeded with ``seed``). Two
variants whose models draw the same random numbers at construction (they differ only in layers
without parameters: activations, dropout) start from identical weights; otherwise only the
weights drawn before the first difference match. :func:`run_experiment` returns tidy
tables (one row per run and epoch, one row per run and step) that the other helpers read:

- :func:`summarize`: mean, standard deviation, min and max over seeds, per variant;
- :func:`compare`: the mean difference of two variants, paired by seed, with its 95% interval;
  "beyond seed noise" only when the interval excludes 0 (:func:`false_positive_rate` simulates
  how often that is said of two equal variants);
- :func:`epochs_to`: the first epoch at which each run reached a threshold (measured, not guessed);
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import nn

from .data import FashionMNISTTensors, TensorLoader
from .models import FashionCNN
from .train import bf16_pays, evaluate, fit, seed_everything

__all__ = [
    "CONFIDENCE",
    "Comparison",
    "ExperimentResult",
    "Variant",
    "compare",
    "epochs_to",
    "false_positive_rate",
    "format_summary",
    "paired_comparison",
    "rejection_rate",
    "run_experiment",
    "summarize",
]

CONFIDENCE = 0.95  # the level of every interval that decides "beyond seed noise"

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
}


@dataclass(frozen=True)
class Variant:
    """One arm of a comparison: a ``FashionCNN`` configuration and its optimiser settings.

    Args:
        name: the label used in tables and legends.
        model: keyword arguments for :class:`~course_utils.models.FashionCNN`.
        lr: learning rate.
        optimizer: ``"adam"`` or ``"sgd"`` (SGD with momentum 0.9).
        tags: extra columns for the result tables (e.g. ``{"norm": "batch"}``).
    """

    name: str
    model: Mapping[str, Any] = field(default_factory=dict)
    lr: float = 1e-3
    optimizer: str = "adam"
    tags: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {sorted(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")

    def build(self) -> FashionCNN:
        """A freshly initialised model (seed the RNG first for a reproducible init)."""
        return FashionCNN(**self.model)


@dataclass
class ExperimentResult:
    """What :func:`run_experiment` measured.

    Attributes:
        epochs: one row per (variant, seed, epoch): ``train_loss``, ``train_acc`` (on the fly,
            in train mode), ``val_loss``, ``val_acc``, ``epoch_time`` and, for each extra
            evaluation set ``name``, ``{name}_loss`` and ``{name}_acc`` (eval mode), plus the
            variant's ``lr`` and tags.
        steps: one row per (variant, seed, step) with the training ``loss`` of that batch.
        models: the trained models by ``(variant, seed)`` (empty unless ``keep_models``).
        seconds: wall time of the whole experiment.
    """

    epochs: pd.DataFrame
    steps: pd.DataFrame
    models: dict[tuple[str, int], nn.Module] = field(default_factory=dict)
    seconds: float = 0.0

    def final(self) -> pd.DataFrame:
        """The last epoch of every run: one row per (variant, seed)."""
        last = self.epochs.groupby(["variant", "seed"], sort=False)["epoch"].transform("max")
        return self.epochs[self.epochs["epoch"] == last].reset_index(drop=True)


def run_experiment(
    variants: Sequence[Variant],
    seeds: Sequence[int],
    train: FashionMNISTTensors,
    val: FashionMNISTTensors,
    epochs: int,
    *,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    bf16: bool | None = None,
    channels_last: bool = True,
    extra_eval: Mapping[str, FashionMNISTTensors] | None = None,
    eval_batch_size: int = 128,
    keep_models: bool = False,
    progress: bool = True,
) -> ExperimentResult:
    """Train every variant with every seed and return tidy per-epoch and per-step tables.

    For each seed, every variant starts from ``seed_everything(seed)`` and sees the training
    batches in the same order, so a difference between variants of one seed is caused by the
    variant, and the spread over seeds measures how much of it is luck. Runs are ordered seed by
    seed, so an interrupted experiment still has complete seeds.

    Args:
        variants: the arms of the comparison (distinct names).
        seeds: at least one seed; use two or more to measure the spread.
        train: training images (shuffled each epoch); ``val`` is evaluated after each epoch.
        bf16: bfloat16 autocast for the forward passes (training and evaluation); ``None``: where
            it pays, by :func:`~course_utils.train.bf16_pays` (a GPU or a CPU with native bf16).
        extra_eval: more sets evaluated in eval mode after each epoch (e.g. ``{"train_eval":
            train}`` for the training accuracy without dropout).
        eval_batch_size: batch size for evaluation (on a 2-core CPU, batches of 128 evaluated
            about 3× faster than batches of 1,000: they stay in cache).
        keep_models: keep the trained models in the result; ``progress``: print a line per run.

    Raises:
        ValueError: no variants or seeds, duplicate names, ``epochs < 1``, or an extra set named
            like a built-in column.
    """
    names = [v.name for v in variants]
    if not variants or not seeds:
        raise ValueError("need at least one variant and one seed")
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be distinct, got {names}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {list(seeds)}")
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    extra_eval = dict(extra_eval or {})
    if reserved := set(extra_eval) & {"train", "val"}:
        raise ValueError(f"extra_eval names {sorted(reserved)} clash with built-in columns")
    device = torch.device(device)
    bf16 = bf16_pays(device) if bf16 is None else bf16
    eval_sets = {"val": val, **extra_eval}
    loaders = {k: TensorLoader(d, eval_batch_size, device=device) for k, d in eval_sets.items()}
    epoch_rows: list[dict[str, Any]] = []
    step_frames: list[pd.DataFrame] = []
    models: dict[tuple[str, int], nn.Module] = {}
    start_all = time.perf_counter()
    for seed in seeds:
        for variant in variants:
            seed_everything(seed)
            model = variant.build().to(device)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            optimizer = OPTIMIZERS[variant.optimizer](model.parameters(), lr=variant.lr)
            batches = TensorLoader(train, batch_size, shuffle=True, seed=seed, device=device)
            info = {"variant": variant.name, "seed": seed, "lr": variant.lr, **variant.tags}
            steps: list[float] = []
            for epoch in range(1, epochs + 1):
                # One epoch per call: the loader's generator carries on, so the batch order is
                # exactly that of a single multi-epoch fit.
                h = fit(model, batches, None, 1, optimizer, bf16=bf16, progress=False)
                row = {**info, "epoch": epoch}
                for key in ("train_loss", "train_acc", "epoch_time"):
                    row[key] = getattr(h, key)[0]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    for name, loader in loaders.items():
                        row[f"{name}_loss"], row[f"{name}_acc"] = evaluate(model, loader)
                epoch_rows.append(row)
                steps += h.step_loss
            step_frames.append(
                pd.DataFrame({**info, "step": np.arange(1, len(steps) + 1), "loss": steps})
            )
            if keep_models:
                models[(variant.name, seed)] = model.eval()
            if progress:
                last = epoch_rows[-1]
                print(
                    f"{variant.name:>24} seed {seed}: val_acc {last['val_acc']:.4f} "
                    f"after {epochs} epoch(s), {last['epoch_time']:.1f} s/epoch"
                )
    return ExperimentResult(
        epochs=pd.DataFrame(epoch_rows),
        steps=pd.concat(step_frames, ignore_index=True),
        models=models,
        seconds=time.perf_counter() - start_all,
    )


def _require_columns(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    if missing := [c for c in columns if c not in frame.columns]:
        raise KeyError(f"columns {missing} not in the frame (it has {list(frame.columns)})")


def summarize(
    frame: pd.DataFrame,
    metrics: str | Sequence[str],
    by: str | Sequence[str] = "variant",
) -> pd.DataFrame:
    """Mean, standard deviation (over seeds, ``ddof=1``), min, max and ``n`` of each metric.

    Pass one row per run (e.g. :meth:`ExperimentResult.final`, or :func:`epochs_to`'s output).
    Groups keep the order in which they first appear. Columns are a two-level index
    ``(metric, statistic)``; ``std`` is ``nan`` for a single seed.
    """
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    by = [by] if isinstance(by, str) else list(by)
    _require_columns(frame, [*metrics, *by])
    if "seed" in frame.columns and frame.duplicated([*by, "seed"]).any():
        raise ValueError(
            "more than one row per run and group: pass one row per run, e.g. result.final()"
        )
    stats = frame.groupby(by, sort=False)[metrics].agg(["mean", "std", "min", "max", "count"])
    return stats.rename(columns={"count": "n"}, level=1)


def format_summary(
    summary: pd.DataFrame, scale: float = 100.0, digits: int = 2, spread: bool = True
) -> pd.DataFrame:
    """``mean ± std [min–max]`` strings per metric from :func:`summarize` (``scale=100`` shows
    fractions as percentages; ``scale=1`` for times or epochs)."""

    def cell(r: pd.Series) -> str:
        text = f"{r['mean']:.{digits}f} ± {r['std']:.{digits}f}"
        return text + (f"  [{r['min']:.{digits}f}–{r['max']:.{digits}f}]" if spread else "")

    metrics = summary.columns.get_level_values(0).unique()
    frame = pd.DataFrame(
        {m: (summary[m] * [scale, scale, scale, scale, 1]).apply(cell, axis=1) for m in metrics}
    )
    frame["seeds"] = summary.xs("n", axis=1, level=1).iloc[:, 0].astype(int)
    return frame


@dataclass(frozen=True)
class Comparison:
    """Two variants compared seed by seed: the paired mean difference and its 95% interval.

    For each seed both variants started from the same initialisation seed and saw the same
    batches (:func:`run_experiment`; the initial weights are the same as far as the two models
    draw the same random numbers), so ``a - b`` of one seed is the effect of the variant plus what
    is left of the seed's luck. ``diff`` is the mean of those ``n`` paired differences and
    ``(low, high)`` its Student-t interval; the difference is *beyond seed noise* only when the
    interval excludes 0. At 95% that rule says so in 5% of comparisons of two equal variants
    whose paired differences are normal (:func:`false_positive_rate`); when the interval
    includes 0 the difference is *not resolved* with ``n`` seeds, which is not the same as no
    difference.
    """

    a: str
    b: str
    metric: str
    n: int
    mean_a: float
    mean_b: float
    diff: float
    low: float
    high: float
    confidence: float = CONFIDENCE

    @property
    def interval(self) -> tuple[float, float]:
        """``(low, high)``: the interval for the mean paired difference ``a - b``."""
        return (self.low, self.high)

    @property
    def beyond_noise(self) -> bool:
        """The interval excludes 0. An interval of no width (every seed gave the same
        difference, as whole-epoch counts can) measured no seed noise: never beyond it."""
        return self.low < self.high and (self.low > 0 or self.high < 0)

    def verdict(self, lower_is_better: bool = False) -> str:
        """``"beyond seed noise in favour of <a or b>"`` or ``"not resolved with <n> seeds (the
        interval includes 0)"``."""
        if self.low == self.high:
            return (
                f"not resolved with {self.n} seeds (every seed gave the same difference, so "
                "the interval has no width and measures no seed noise)"
            )
        if not self.beyond_noise:
            return f"not resolved with {self.n} seeds (the interval includes 0)"
        a_ahead = (self.diff < 0) if lower_is_better else (self.diff > 0)
        return f"beyond seed noise in favour of {self.a if a_ahead else self.b}"

    def sentence(
        self, fmt: Callable[[float], str] | None = None, lower_is_better: bool = False
    ) -> str:
        """One plain sentence: both means, the paired difference with its interval and ``n``,
        and the verdict.

        For example ``"BatchNorm 85.1% vs no BN 82.3%; paired difference (BatchNorm − no BN)
        +2.8 points (95% interval +1.9 to +3.7 points, n = 5 seeds): beyond seed noise in favour of
        BatchNorm"``, or ``"…: not resolved with 5 seeds (the interval includes 0)"``. ``fmt``
        formats a mean and a difference (default: a fraction as a percentage, a difference of
        fractions in percentage points); ``lower_is_better``: the metric is a loss, an error or a
        time, so a negative ``a - b`` favours ``a``.
        """
        mean_fmt = fmt or (lambda v: f"{100 * v:.1f}%")
        diff_fmt = fmt or (lambda v: f"{100 * v:.1f}")
        unit = "" if fmt else " points"

        def signed(v: float) -> str:
            text = diff_fmt(v)
            return text if text.startswith(("-", "+", "−")) else f"+{text}"

        return (
            f"{self.a} {mean_fmt(self.mean_a)} vs {self.b} {mean_fmt(self.mean_b)}; paired "
            f"difference ({self.a} − {self.b}) {signed(self.diff)}{unit} "
            f"({self.confidence:.0%} interval {signed(self.low)} to {signed(self.high)}{unit}, "
            f"n = {self.n} seeds): {self.verdict(lower_is_better)}"
        )


@cache
def _t_quantile(n: int, confidence: float) -> float:
    return float(stats.t.ppf((1 + confidence) / 2, df=n - 1))


def paired_comparison(
    values_a: Sequence[float] | np.ndarray,
    values_b: Sequence[float] | np.ndarray,
    a: str = "a",
    b: str = "b",
    metric: str = "value",
    confidence: float = CONFIDENCE,
) -> Comparison:
    """The comparison of two arms measured on the same seeds, in the same order.

    Raises:
        ValueError: the arms differ in length, fewer than two seeds, or a value is not finite.
    """
    va, vb = np.asarray(values_a, dtype=float), np.asarray(values_b, dtype=float)
    if va.shape != vb.shape or va.ndim != 1:
        raise ValueError(f"need one value per seed in each arm, got {va.shape} and {vb.shape}")
    n = len(va)
    if n < 2:
        raise ValueError(f"{n} paired seed(s): need at least two seeds to measure seed noise")
    if not (np.isfinite(va).all() and np.isfinite(vb).all()):
        raise ValueError(f"{metric}: every value must be finite, got {va} and {vb}")
    d = va - vb
    mean = float(d.mean())
    half = _t_quantile(n, confidence) * float(d.std(ddof=1)) / math.sqrt(n)
    means = float(va.mean()), float(vb.mean())
    return Comparison(a, b, metric, n, *means, mean, mean - half, mean + half, confidence)


def compare(frame: pd.DataFrame, a: str, b: str, metric: str, by: str = "variant") -> Comparison:
    """Compare ``metric`` between groups ``a`` and ``b`` of ``frame``, paired on its ``seed``.

    ``frame`` has one row per run (e.g. :meth:`ExperimentResult.final`) with columns ``by``,
    ``seed`` and ``metric``; ``a`` and ``b`` must have been run with the same seeds.

    Raises:
        KeyError: a column is missing, or ``a`` or ``b`` is not a group of ``frame[by]``.
        ValueError: a seed appears twice in a group, the two groups' seeds differ, there are
            fewer than two seeds, or a value is not finite.
    """
    _require_columns(frame, [by, "seed", metric])
    arms = {}
    for name in (a, b):
        rows = frame.loc[frame[by] == name, ["seed", metric]]
        if rows.empty:
            raise KeyError(
                f"{name!r} not found in column {by!r} (have {frame[by].unique().tolist()})"
            )
        if rows["seed"].duplicated().any():
            raise ValueError(
                f"{name!r} has several rows for one seed: pass one row per run, e.g. result.final()"
            )
        arms[name] = rows.set_index("seed")[metric]
    seeds = list(arms[a].index)
    if set(seeds) != set(arms[b].index):
        raise ValueError(
            f"{a!r} and {b!r} must be run with the same seeds to be paired, got seeds "
            f"{sorted(arms[a].index, key=str)} and {sorted(arms[b].index, key=str)}"
        )
    return paired_comparison(arms[a].to_numpy(), arms[b][seeds].to_numpy(), a, b, metric)


def rejection_rate(
    n_seeds: int,
    effect: float = 0.0,
    *,
    shared_sd: float = 0.0,
    n_sim: int = 4000,
    seed: int = 0,
) -> float:
    """How often :func:`compare`'s rule says "beyond seed noise", in simulated experiments.

    Each simulated experiment has ``n_seeds`` seeds; the value of an arm for a seed is a shared
    per-seed effect (normal, sd ``shared_sd``: a lucky seed is lucky for both arms) plus the
    arm's own noise (normal, sd 1), plus ``effect`` for arm ``a``. With ``effect=0`` this is the
    false-positive rate; otherwise the power to detect an effect of ``effect`` noise sds.
    """
    rng = np.random.default_rng(seed)
    shared = rng.normal(0.0, shared_sd, (n_sim, n_seeds))
    values_a = shared + rng.normal(0.0, 1.0, (n_sim, n_seeds)) + effect
    values_b = shared + rng.normal(0.0, 1.0, (n_sim, n_seeds))
    pairs = zip(values_a, values_b, strict=True)
    return sum(paired_comparison(va, vb).beyond_noise for va, vb in pairs) / n_sim


def false_positive_rate(
    n_seeds: int, n_sim: int = 4000, seed: int = 0, shared_sd: float = 0.0
) -> float:
    """The simulated share of "beyond seed noise" verdicts between two equal arms (see
    :func:`rejection_rate`); about ``1 - confidence`` = 5% for every ``n_seeds >= 2``."""
    return rejection_rate(n_seeds, 0.0, shared_sd=shared_sd, n_sim=n_sim, seed=seed)


def epochs_to(
    frame: pd.DataFrame, threshold: float, metric: str = "val_acc", by: str = "variant"
) -> pd.DataFrame:
    """The first epoch at which each run's ``metric`` reached ``threshold`` (``>=``).

    Returns one row per run with columns ``by``, ``seed`` and ``epochs_to`` (``nan`` when the run
    never reached it: then the run needs more epochs than it had, which a mean would hide, so
    count them separately).
    """
    rows = []
    for (group, seed), run in frame.sort_values("epoch").groupby([by, "seed"], sort=False):
        hit = run.loc[run[metric] >= threshold, "epoch"]
        first = float(hit.iloc[0]) if len(hit) else math.nan
        rows.append({by: group, "seed": seed, "epochs_to": first})
    order = list(dict.fromkeys(frame[by]))
    out = pd.DataFrame(rows)
    out[by] = pd.Categorical(out[by], categories=order, ordered=True)
    out = out.sort_values([by, "seed"]).reset_index(drop=True)
    out[by] = out[by].astype(str)
    return out
