"""Figures the chapters share: learning curves, confusion matrix, image grids, misclassifications;
and ``show_source``, the highlighted listing of a package function a chapter wants read.

Each function draws on a new figure (or the ``ax`` given), labels its axes, sets a title and
returns the figure, so a notebook can show it, save it or add to it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Code
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix

from .data import CLASSES, MEAN, STD

__all__ = [
    "display_image",
    "plot_confusion_matrix",
    "plot_curves",
    "plot_history",
    "plot_misclassified",
    "show_images",
    "show_source",
]


def show_source(obj: Callable | type) -> Code:
    """The source of a package function or class, syntax-highlighted in the notebook and book.

    For plumbing worth reading but not worth re-typing; a chapter's lesson is written in the
    chapter instead.
    """
    return Code(inspect.getsource(obj), language="python")


def plot_history(
    histories: Mapping[str, Mapping[str, Sequence[float]]] | Mapping[str, Sequence[float]],
    title: str = "Learning curves",
) -> Figure:
    """Loss and accuracy per epoch, train (dashed) vs validation (solid), of one
    ``History.to_dict()`` or of several runs, ``{run name: History.to_dict()}``."""
    if "train_loss" in histories:
        histories = {"": histories}  # a single run
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, (name, h) in enumerate(histories.items()):
        color = f"C{i}"
        epochs = np.arange(1, len(h["train_loss"]) + 1)
        label = f"{name} " if name else ""
        for ax, key in ((ax_loss, "loss"), (ax_acc, "acc")):
            ax.plot(epochs, h[f"train_{key}"], "--", color=color, label=f"{label}train")
            if h.get(f"val_{key}"):
                ax.plot(epochs, h[f"val_{key}"], "-o", color=color, ms=3, label=f"{label}val")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_confusion_matrix(
    y_true: Sequence[int] | torch.Tensor,
    y_pred: Sequence[int] | torch.Tensor,
    classes: Sequence[str] = CLASSES,
    normalize: bool = True,
    title: str = "Confusion matrix (test set)",
) -> Figure:
    """Confusion matrix computed by scikit-learn; rows are true classes, normalised per row."""
    cm = confusion_matrix(
        np.asarray(y_true),
        np.asarray(y_pred),
        labels=range(len(classes)),
        normalize="true" if normalize else None,
    )
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(im, ax=ax, label="fraction of the true class" if normalize else "count")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes, rotation=45, ha="right")
    ax.set_yticks(ticks, classes)
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    threshold = cm.max() / 2
    for i, j in np.ndindex(cm.shape):
        text = f"{cm[i, j]:.2f}" if normalize else f"{cm[i, j]:d}"
        color = "white" if cm[i, j] > threshold else "black"
        ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    return fig


def display_image(x: torch.Tensor) -> np.ndarray:
    """A ``[1, H, W]`` or ``[H, W]`` image, normalised or uint8, as floats in [0, 1]."""
    x = x.detach().cpu().squeeze()
    if x.dtype == torch.uint8:
        return x.float().numpy() / 255
    return (x.float() * STD + MEAN).clamp(0, 1).numpy()


def show_images(
    images: torch.Tensor | Sequence[torch.Tensor],
    titles: Sequence[str] | None = None,
    ncols: int = 8,
    title: str = "",
    title_colors: Sequence[str] | None = None,
) -> Figure:
    """A grid of greyscale images (uint8 or normalised tensors) with a caption under each."""
    n = len(images)
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.45 * ncols, 1.7 * nrows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(display_image(images[k]), cmap="gray_r", vmin=0, vmax=1)
            if titles is not None:
                color = title_colors[k] if title_colors is not None else "black"
                ax.set_title(titles[k], fontsize=7, color=color)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_misclassified(
    images: torch.Tensor,
    y_true: torch.Tensor,
    y_pred: torch.Tensor,
    classes: Sequence[str] = CLASSES,
    n: int = 24,
    title: str = "Misclassified test images (true → predicted)",
) -> Figure:
    """A gallery of the first ``n`` misclassified images, captioned ``true → predicted``."""
    wrong = torch.nonzero(torch.as_tensor(y_true) != torch.as_tensor(y_pred)).flatten()[:n]
    titles = [f"{classes[y_true[i]]}\n→ {classes[y_pred[i]]}" for i in wrong.tolist()]
    return show_images(images[wrong], titles, title=title, title_colors=["firebrick"] * len(wrong))


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

    ``frame`` is a tidy table with columns ``by`` (one line per value), ``seed``, ``x``
    (``"epoch"`` or ``"step"``) and ``metric``; ``title`` and ``ylabel`` default to the metric's
    name, ``ax`` to a new figure, ``colors`` (per group) to matplotlib's cycle. ``smooth`` is a
    moving-average window applied per run before averaging (for noisy step losses); use
    ``linestyle="--"`` and a ``label_suffix`` to overlay training curves.
    """
    fig, ax = plt.subplots(figsize=(6.5, 4)) if ax is None else (ax.figure, ax)
    for i, (group, part) in enumerate(frame.groupby(by, sort=False)):
        wide = part.pivot_table(index=x, columns="seed", values=metric)
        if smooth > 1:
            wide = wide.rolling(smooth, min_periods=1).mean()
        color = (colors or {}).get(group, f"C{i}")
        mean = wide.mean(axis=1)
        marker = "o" if x == "epoch" and len(wide) <= 30 else None
        label = f"{group}{label_suffix} (n={wide.shape[1]})"
        ax.plot(mean.index, mean, linestyle, color=color, marker=marker, ms=3, label=label)
        ax.fill_between(
            wide.index, wide.min(axis=1), wide.max(axis=1), color=color, alpha=0.2, lw=0
        )
    ax.set(xlabel=x, ylabel=ylabel or metric, title=title or metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if x == "epoch":
        ax.xaxis.get_major_locator().set_params(integer=True)
    return fig
