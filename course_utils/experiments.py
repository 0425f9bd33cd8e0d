"""Multi-seed comparisons: run model variants × seeds fairly, then summarise, compare and plot.

A *run* is one variant trained with one seed. For a given seed every variant gets the same
initialisation seed (``seed_everything(seed)`` right before the model is built) and the same
order of training batches (a :class:`~course_utils.data.TensorLoader` seeded with ``seed``), so
the variants differ only in what the comparison is about. :func:`run_experiment` returns tidy
tables (one row per run and epoch, one row per run and step) that the other helpers read:

- :func:`summarize`: mean, standard deviation, min and max over seeds, per variant;
- :func:`compare`: is the difference of two variants' means larger than the seed spread?
- :func:`epochs_to`: the first epoch at which each run reached a threshold (measured, not guessed);
- :func:`plot_curves`: the mean over seeds as a line, the min–max range over seeds shaded.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn

from .data import FashionMNISTTensors, TensorLoader
from .models import FashionCNN
from .train import evaluate, fit, seed_everything

__all__ = [
    "Comparison",
    "ExperimentResult",
    "Variant",
    "compare",
    "epochs_to",
    "format_summary",
    "plot_curves",
    "run_experiment",
    "summarize",
]

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
    bf16: bool = True,
    channels_last: bool = True,
    extra_eval: Mapping[str, FashionMNISTTensors] | None = None,
    eval_batch_size: int = 1000,
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
        train: training images (shuffled each epoch).
        val: validation images, evaluated after each epoch.
        epochs: passes over ``train``.
        batch_size: training batch size.
        device: where to train.
        bf16: bfloat16 autocast for the forward passes (training and evaluation).
        channels_last: ``channels_last`` memory layout for the model.
        extra_eval: more sets evaluated in eval mode after each epoch (e.g. ``{"train_eval":
            train}`` for the training accuracy without dropout).
        eval_batch_size: batch size for evaluation.
        keep_models: keep the trained models in the result.
        progress: print one line per finished run.

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
    val_batches = TensorLoader(val, eval_batch_size, device=device)
    extra_batches = {
        k: TensorLoader(d, eval_batch_size, device=device) for k, d in extra_eval.items()
    }
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
                row = {
                    **info,
                    "epoch": epoch,
                    "train_loss": h.train_loss[0],
                    "train_acc": h.train_acc[0],
                    "epoch_time": h.epoch_time[0],
                }
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    for name, loader in {"val": val_batches, **extra_batches}.items():
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
    missing = [c for c in [*metrics, *by] if c not in frame.columns]
    if missing:
        raise KeyError(f"columns {missing} not in the frame (it has {list(frame.columns)})")
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
    out = {}
    for metric in summary.columns.get_level_values(0).unique():
        s = summary[metric] * [scale, scale, scale, scale, 1]
        text = s.apply(
            lambda r: (
                f"{r['mean']:.{digits}f} ± {r['std']:.{digits}f}"
                + (f"  [{r['min']:.{digits}f}–{r['max']:.{digits}f}]" if spread else "")
            ),
            axis=1,
        )
        out[metric] = text
    frame = pd.DataFrame(out)
    frame["seeds"] = summary.xs("n", axis=1, level=1).iloc[:, 0].astype(int)
    return frame


@dataclass(frozen=True)
class Comparison:
    """Two variants' means and whether their difference stands out from seed-to-seed noise.

    ``beyond_noise`` is the course's screening rule: the seed ranges do not overlap **and** the
    difference of means is more than twice the larger of the two standard deviations. With two or
    three seeds this is a sanity filter, not a significance test.
    """

    a: str
    b: str
    metric: str
    mean_a: float
    mean_b: float
    std_a: float
    std_b: float
    n_a: int
    n_b: int
    ranges_overlap: bool

    @property
    def diff(self) -> float:
        """``mean_a - mean_b``."""
        return self.mean_a - self.mean_b

    @property
    def spread(self) -> float:
        """The larger of the two standard deviations over seeds."""
        return max(self.std_a, self.std_b)

    @property
    def beyond_noise(self) -> bool:
        """Non-overlapping seed ranges and ``|diff| > 2 × spread``."""
        return (not self.ranges_overlap) and abs(self.diff) > 2 * self.spread

    def sentence(
        self,
        fmt: Callable[[float], str] = lambda v: f"{100 * v:.1f}%",
        lower_is_better: bool = False,
    ) -> str:
        """One plain sentence: both means ± std over seeds, then the verdict of the rule.

        For example ``"BatchNorm 71.5% ± 1.4% vs no BN 61.3% ± 2.6%: a real difference in
        favour of BatchNorm (every BatchNorm seed beat every no BN seed)"``.

        Args:
            fmt: formats a mean, a standard deviation or a difference (default: a fraction as
                a percentage).
            lower_is_better: the metric is a loss, an error or a time: the lower mean is ahead.
        """
        a_ahead = (self.diff < 0) if lower_is_better else (self.diff > 0)
        ahead, behind = (self.a, self.b) if a_ahead else (self.b, self.a)
        numbers = (
            f"{self.a} {fmt(self.mean_a)} ± {fmt(self.std_a)} vs "
            f"{self.b} {fmt(self.mean_b)} ± {fmt(self.std_b)}"
        )
        if self.beyond_noise:
            verdict = (
                f"a real difference in favour of {ahead} "
                f"(every {ahead} seed beat every {behind} seed)"
            )
        elif self.ranges_overlap:
            verdict = "within seed noise (the seeds' ranges overlap)"
        else:
            verdict = (
                f"within seed noise (every {ahead} seed beat every {behind} seed, but the "
                f"gap of {fmt(abs(self.diff))} is less than twice the spread)"
            )
        return f"{numbers}: {verdict}"


def compare(frame: pd.DataFrame, a: str, b: str, metric: str, by: str = "variant") -> Comparison:
    """Compare ``metric`` between groups ``a`` and ``b`` of ``frame`` (one row per run).

    Raises:
        KeyError: ``a`` or ``b`` is not a group of ``frame[by]``.
        ValueError: a group has fewer than two runs (no spread can be measured).
    """
    values = {}
    for name in (a, b):
        v = frame.loc[frame[by] == name, metric].to_numpy(dtype=float)
        if len(v) == 0:
            raise KeyError(
                f"{name!r} not found in column {by!r} (have {frame[by].unique().tolist()})"
            )
        if len(v) < 2:
            raise ValueError(f"{name!r} has {len(v)} run; need at least two seeds to judge noise")
        values[name] = v
    va, vb = values[a], values[b]
    overlap = not (va.min() > vb.max() or vb.min() > va.max())
    return Comparison(
        a=a,
        b=b,
        metric=metric,
        mean_a=float(va.mean()),
        mean_b=float(vb.mean()),
        std_a=float(va.std(ddof=1)),
        std_b=float(vb.std(ddof=1)),
        n_a=len(va),
        n_b=len(vb),
        ranges_overlap=overlap,
    )


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
        rows.append(
            {by: group, "seed": seed, "epochs_to": float(hit.iloc[0]) if len(hit) else math.nan}
        )
    order = list(dict.fromkeys(frame[by]))
    out = pd.DataFrame(rows)
    out[by] = pd.Categorical(out[by], categories=order, ordered=True)
    out = out.sort_values([by, "seed"]).reset_index(drop=True)
    out[by] = out[by].astype(str)
    return out


def plot_curves(
    frame: pd.DataFrame,
    metric: str,
    *,
    x: str = "epoch",
    by: str = "variant",
    ax: Axes | None = None,
    title: str | None = None,
    ylabel: str | None = None,
    smooth: int = 1,
    linestyle: str = "-",
    colors: Mapping[str, str] | None = None,
    label_suffix: str = "",
) -> Figure:
    """Mean of ``metric`` over seeds against ``x``, with the min–max range over seeds shaded.

    Args:
        frame: a tidy table with columns ``by``, ``seed``, ``x`` and ``metric``.
        metric: the column to plot.
        x: the column for the horizontal axis (``"epoch"`` or ``"step"``).
        by: one line per value of this column.
        ax: draw into this axes (default: a new figure).
        title: axes title (default: the metric's name).
        ylabel: y-axis label (default: the metric's name).
        smooth: moving-average window applied per run before averaging (for noisy step losses).
        linestyle: line style (e.g. ``"--"`` to overlay training curves).
        colors: a colour per group (default: matplotlib's cycle in order of appearance).
        label_suffix: appended to each legend entry.
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.5, 4))
    else:
        fig = ax.figure
    for i, (group, part) in enumerate(frame.groupby(by, sort=False)):
        wide = part.pivot_table(index=x, columns="seed", values=metric)
        if smooth > 1:
            wide = wide.rolling(smooth, min_periods=1).mean()
        color = (colors or {}).get(group, f"C{i}")
        n = wide.shape[1]
        ax.plot(
            wide.index,
            wide.mean(axis=1),
            linestyle,
            color=color,
            marker="o" if x == "epoch" and len(wide) <= 30 else None,
            ms=3,
            label=f"{group}{label_suffix} (n={n})",
        )
        ax.fill_between(
            wide.index, wide.min(axis=1), wide.max(axis=1), color=color, alpha=0.2, lw=0
        )
    ax.set(xlabel=x, ylabel=ylabel or metric, title=title or metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if x == "epoch":
        ax.xaxis.get_major_locator().set_params(integer=True)
    return fig
