"""Looking inside a CNN: activations captured with forward hooks, filter grids, feature maps.

Activations are recorded with :func:`course_utils.hooks.capture_activations` (chapter 5 writes
the raw hooks first).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from torch import nn

from .hooks import capture_activations
from .plots import display_image
from .train import eval_mode

if TYPE_CHECKING:  # ipywidgets is imported lazily: the package works without a notebook front end
    import ipywidgets

__all__ = [
    "STAGES",
    "activation_explorer",
    "channel_scores",
    "filters_for_display",
    "plot_activation",
    "plot_feature_maps",
    "plot_filters",
    "plot_top_activating",
    "stage_activations",
    "summarise_kernels",
    "top_k_indices",
]

# The stages of FashionCNN's forward pass, in order: (stage name, module name, call number).
# ``pool`` is one module used twice, so its hook fires twice per forward pass.
STAGES: tuple[tuple[str, str, int], ...] = (
    ("conv1", "conv1", 0),
    ("relu1", "act1", 0),
    ("pool1", "pool", 0),
    ("conv2", "conv2", 0),
    ("relu2", "act2", 0),
    ("pool2", "pool", 1),
)


def stage_activations(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The output of each stage of :data:`STAGES` for the batch ``x``, in forward order."""
    device = next(model.parameters()).device
    modules = [m for _, m, _ in STAGES]
    with eval_mode(model), capture_activations(model, modules) as acts, torch.no_grad():
        model(x.to(device))
    return {stage: acts[module][call] for stage, module, call in STAGES}


def filters_for_display(weight: torch.Tensor) -> torch.Tensor:
    """Each filter of a ``[out, 1, kh, kw]`` (or ``[out, kh, kw]``) weight min-max scaled to [0, 1].

    Per-filter scaling shows every filter's pattern at full contrast, but hides how strong the
    filters are relative to each other; :func:`plot_filters` uses one shared scale instead.
    """
    w = weight.detach().float().cpu()
    if w.dim() == 4:
        if w.shape[1] != 1:
            raise ValueError(f"expected one input channel, got weight of shape {tuple(w.shape)}")
        w = w[:, 0]
    flat = w.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    scaled = (flat - lo) / (hi - lo).clamp_min(1e-12)
    return scaled.view_as(w)


def summarise_kernels(weight: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """One 2-D kernel per output channel of a ``[out, in, kh, kw]`` conv weight: ``how="mean"``
    averages over input channels; ``"strongest"`` keeps, per output channel, the input channel's
    kernel with the largest L2 norm."""
    w = weight.detach().float().cpu()
    if how == "mean":
        return w.mean(1)
    if how == "strongest":
        best = w.flatten(2).norm(dim=2).argmax(1)
        return w[torch.arange(len(w)), best]
    raise ValueError(f"how must be 'mean' or 'strongest', got {how!r}")


def plot_filters(
    panels: Mapping[str, torch.Tensor], ncols: int = 8, title: str = "", cmap: str = "RdBu_r"
) -> Figure:
    """Grids of 2-D kernels side by side, on one shared, symmetric colour scale with a colour bar.

    ``panels`` is ``{panel title: [n, kh, kw] kernels}`` (e.g. before / after training), with
    ``ncols`` kernels per row; ``cmap`` is diverging (0 is white: negative and positive weights
    read apart).
    """
    vmax = max(float(k.detach().abs().max()) for k in panels.values())
    nrows = max(-(-len(k) // ncols) for k in panels.values())
    fig = plt.figure(figsize=(4.2 * len(panels) + 0.8, 0.55 * nrows + 1.3))
    grids = fig.add_gridspec(1, len(panels) + 1, width_ratios=[*[1] * len(panels), 0.05])
    image = None
    for p, (name, kernels) in enumerate(panels.items()):
        sub = grids[0, p].subgridspec(nrows, ncols, wspace=0.08, hspace=0.08)
        for i in range(nrows * ncols):
            ax = fig.add_subplot(sub[i // ncols, i % ncols])
            ax.set(xticks=[], yticks=[])
            if i < len(kernels):
                k = kernels[i].detach().float().cpu().numpy()
                image = ax.imshow(k, cmap=cmap, vmin=-vmax, vmax=vmax)
            else:
                ax.axis("off")
            if i == 0:
                ax.set_title(name, loc="left", fontsize=10, pad=8)
    cax = fig.add_subplot(grids[0, -1])
    fig.colorbar(image, cax=cax, label="weight")
    if title:
        fig.suptitle(title)
    return fig


def _show_image(ax: plt.Axes, image: torch.Tensor, title: str) -> None:
    ax.imshow(display_image(image), cmap="gray", vmin=0, vmax=1)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def plot_feature_maps(
    image: torch.Tensor,
    activations: Mapping[str, torch.Tensor],
    channels: Sequence[int] = tuple(range(8)),
    title: str = "Feature maps",
) -> Figure:
    """One row per stage (``activations[stage]`` is ``[1, C, H, W]``), one column per channel.

    Each map has its own colour scale (``viridis``); the input image is shown on the left.
    """
    rows, cols = len(activations), len(channels) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.35 * rows), squeeze=False)
    for r, (stage, act) in enumerate(activations.items()):
        _show_image(axes[r, 0], image, "input" if r == 0 else "")
        if r:
            axes[r, 0].set_visible(False)
        for c, ch in enumerate(channels):
            ax = axes[r, c + 1]
            ax.imshow(act[0, ch].numpy(), cmap="viridis")
            ax.set(xticks=[], yticks=[])
            if r == 0 or stage.startswith("conv2"):
                ax.set_title(f"channel {ch}", fontsize=8)
            if c == 0:
                h, w = act.shape[-2:]
                ax.set_ylabel(f"{stage}\n{h}×{w}", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_activation(
    image: torch.Tensor, activation: torch.Tensor, stage: str, channel: int, title: str = ""
) -> Figure:
    """The input image next to one channel's map (``activation`` is ``[1, C, H, W]``).

    This is the figure the interactive explorer redraws, so the static page can show it too.
    """
    fig, (ax_img, ax_map) = plt.subplots(1, 2, figsize=(6.4, 3.0))
    _show_image(ax_img, image, "input image")
    m = activation[0, channel].numpy()
    im = ax_map.imshow(m, cmap="viridis")
    ax_map.set_title(f"{stage}, channel {channel} ({m.shape[0]}×{m.shape[1]})", fontsize=9)
    ax_map.set_xlabel("x (feature-map pixels)")
    ax_map.set_ylabel("y (feature-map pixels)")
    fig.colorbar(im, ax=ax_map, label="activation")
    fig.suptitle(title or f"What {stage} channel {channel} responds to")
    fig.tight_layout()
    return fig


def channel_scores(
    model: nn.Module,
    module_name: str,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    reduce: str = "max",
) -> torch.Tensor:
    """``[N, C]``: for each image, each channel's activation reduced over space (max or mean)."""
    if reduce not in ("max", "mean"):
        raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")
    device = next(model.parameters()).device
    scores = []
    with eval_mode(model), capture_activations(model, [module_name]) as acts, torch.no_grad():
        for x, _ in batches:
            model(x.to(device))
            flat = acts[module_name].pop().flatten(2)
            scores.append(flat.amax(2) if reduce == "max" else flat.mean(2))
    return torch.cat(scores)


def top_k_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``[C, k]``: per channel (column of ``scores``), the rows with the ``k`` largest scores."""
    return scores.topk(k, dim=0).indices.T


def plot_top_activating(
    images: torch.Tensor,
    top: torch.Tensor,
    channels: Sequence[int],
    labels: torch.Tensor | None = None,
    classes: Sequence[str] | None = None,
    title: str = "Top-activating images",
) -> Figure:
    """Rows: channels; columns: the images of ``top[channel]`` (from :func:`top_k_indices`)."""
    rows, k = len(channels), top.shape[1]
    fig, axes = plt.subplots(rows, k, figsize=(1.05 * k + 0.6, 1.15 * rows), squeeze=False)
    for r, ch in enumerate(channels):
        for c in range(k):
            idx = int(top[ch, c])
            name = classes[int(labels[idx])] if labels is not None and classes else ""
            _show_image(axes[r, c], images[idx], name)
            axes[r, c].title.set_fontsize(6.5)
        axes[r, 0].axis("on")
        axes[r, 0].set_xticks([])
        axes[r, 0].set_yticks([])
        axes[r, 0].set_ylabel(f"ch {ch}", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def activation_explorer(
    model: nn.Module,
    images: torch.Tensor,
    index: int = 0,
    stage: str = "conv1",
    channel: int = 0,
) -> ipywidgets.VBox:
    """An ipywidgets explorer: pick an image index, a stage and a channel; redraws
    :func:`plot_activation`. The initial view is the one drawn for ``index``, ``stage``,
    ``channel``, so a static page can show the same figure."""
    import ipywidgets as widgets
    from IPython.display import display

    stages = [s for s, _, _ in STAGES]
    w_index = widgets.IntSlider(index, 0, len(images) - 1, description="image")
    w_stage = widgets.Dropdown(options=stages, value=stage, description="stage")
    n_channels = {s: a.shape[1] for s, a in stage_activations(model, images[:1]).items()}
    w_channel = widgets.IntSlider(channel, 0, n_channels[stage] - 1, description="channel")
    out = widgets.Output()

    def redraw(*_: object) -> None:
        w_channel.max = n_channels[w_stage.value] - 1
        acts = stage_activations(model, images[w_index.value : w_index.value + 1])
        with out:
            out.clear_output(wait=True)
            fig = plot_activation(
                images[w_index.value], acts[w_stage.value], w_stage.value, w_channel.value
            )
            display(fig)
            plt.close(fig)

    for w in (w_index, w_stage, w_channel):
        w.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([w_index, w_stage, w_channel]), out])
