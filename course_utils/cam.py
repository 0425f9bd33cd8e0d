"""Grad-CAM as chapter 10 writes it, for reuse: hooks owned by a context manager, overlays.

Grad-CAM (Selvaraju et al., 2017) explains one class score ``y_c`` with the activations ``A`` of a
conv layer (``[N, K, h, w]``) and the gradient of the score with respect to them:

    weights = mean over (h, w) of dy_c/dA        # one weight per channel, [N, K]
    cam     = ReLU(sum over k of weights_k * A_k)  # [N, h, w]

:class:`GradCAM` captures ``A`` with a forward hook and ``dy_c/dA`` with a backward hook on the
chosen layer. It is a context manager: the hooks exist only inside the ``with`` block and are
removed on exit, also when the block raises. The model's parameters get no ``.grad``. Chapter 10
writes the same class and proves that this one gives identical maps; this copy (used by chapter
9's Streamlit app) adds layer lookup by name with a clear error, refuses a layer that runs twice
per forward pass, and enables gradients for its own pass, so it works under ``torch.no_grad()``.

The module also has the checks of the chapter: :func:`randomize_weights` (for the sanity check of
Adebayo et al., 2018), :func:`spearman` and :func:`pearson` for comparing maps, and
:func:`torchcam_gradcam`, the same computation by the ``torchcam`` library.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from scipy.stats import rankdata
from torch import nn

from .plots import display_image

__all__ = [
    "GradCAM",
    "gradcam_from",
    "normalize_cams",
    "overlay",
    "pearson",
    "plot_cam_columns",
    "plot_cams",
    "randomize_weights",
    "spearman",
    "torchcam_gradcam",
    "upsample_cams",
]


def _resolve(model: nn.Module, layer: nn.Module | str) -> tuple[str, nn.Module]:
    modules = dict(model.named_modules())
    if isinstance(layer, str):
        if layer not in modules:
            raise ValueError(f"model has no layer {layer!r}; choose one of {sorted(modules)[1:]}")
        return layer, modules[layer]
    for name, module in modules.items():
        if module is layer:
            return name, module
    raise ValueError(f"{type(layer).__name__} is not a layer of this model")


def gradcam_from(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """The Grad-CAM map from a layer's activations and the score's gradient, both ``[N, K, h, w]``.

    Returns:
        ``ReLU(sum_k w_k A_k)`` with ``w_k`` the spatial mean of the gradient, shape ``[N, h, w]``.
    """
    weights = gradients.mean(dim=(2, 3), keepdim=True)  # [N, K, 1, 1]
    return F.relu((weights * activations).sum(dim=1))


class GradCAM:
    """Grad-CAM for one layer of ``model``; use it as a context manager.

    Example::

        with GradCAM(model, "act2") as cam:
            maps, logits = cam(images)                    # maps for the predicted classes
            maps_true, _ = cam(images, class_idx=labels)  # ...or for the given ones

    ``model`` is the classifier (put it in eval mode first); ``layer`` the layer whose output is
    explained, or its name in ``model.named_modules()``.
    """

    def __init__(self, model: nn.Module, layer: nn.Module | str) -> None:
        self.model = model
        self.layer_name, self.layer = _resolve(model, layer)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.activations: torch.Tensor | None = None
        self.gradients: torch.Tensor | None = None

    def _save_activations(self, _m: nn.Module, _i: object, output: torch.Tensor) -> None:
        if self.activations is not None:
            raise RuntimeError(
                f"layer {self.layer_name!r} runs more than once per forward pass (a module "
                "reused, like FashionCNN's `pool`): its activations are ambiguous; hook a layer "
                "that runs once, such as 'act2'"
            )
        self.activations = output.detach()

    def _save_gradients(self, _m: nn.Module, _gi: object, grad_output: tuple) -> None:
        self.gradients = grad_output[0].detach()

    def __enter__(self) -> GradCAM:
        self._handles = [
            self.layer.register_forward_hook(self._save_activations),
            self.layer.register_full_backward_hook(self._save_gradients),
        ]
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove the hooks (called on leaving the ``with`` block) and drop the stored tensors."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.activations = self.gradients = None

    def __call__(
        self, x: torch.Tensor, class_idx: int | Sequence[int] | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (unnormalised) maps ``[N, h, w]`` for ``class_idx`` (default: the predicted class),
        and the logits ``[N, classes]``."""
        if not self._handles:
            raise RuntimeError("use GradCAM inside a `with GradCAM(model, layer) as cam:` block")
        # The input takes part in autograd, so the backward pass reaches the layer even when the
        # weights are frozen; torch.autograd.grad w.r.t. the input leaves every .grad untouched.
        x = x.detach().requires_grad_(True)
        self.activations = self.gradients = None
        with torch.enable_grad():
            logits = self.model(x)
            if class_idx is None:
                target = logits.argmax(1)
            else:
                target = torch.as_tensor(class_idx, device=logits.device).long()
                target = target.expand(len(logits)) if target.ndim == 0 else target
            score = logits.gather(1, target.view(-1, 1)).sum()
            torch.autograd.grad(score, x)
        if self.activations is None or self.gradients is None:
            raise RuntimeError(f"layer {self.layer_name!r} was not used by the forward pass")
        maps = gradcam_from(self.activations, self.gradients)
        return maps, logits.detach()


def normalize_cams(cams: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale each map of ``[N, h, w]`` to [0, 1]: subtract its minimum, divide by its new maximum.

    A constant map becomes all zeros (not NaN). This is the normalisation torchcam applies.
    """
    shifted = cams - cams.flatten(1).amin(1).view(-1, 1, 1)
    return shifted / (shifted.flatten(1).amax(1).view(-1, 1, 1) + eps)


def upsample_cams(cams: torch.Tensor, size: tuple[int, int] = (28, 28)) -> torch.Tensor:
    """Bilinear upsampling of ``[N, h, w]`` maps to the image size ``[N, *size]``."""
    return F.interpolate(cams.unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0]


def overlay(image: torch.Tensor, cam: torch.Tensor, alpha: float = 0.5) -> np.ndarray:
    """An RGB ``[H, W, 3]`` array: the greyscale image under a ``jet``-coloured map in [0, 1].

    ``image`` is ``[1, H, W]`` or ``[H, W]``, uint8 or normalised with the data set's mean/std;
    ``cam`` is ``[H, W]`` (or ``[h, w]``, upsampled here), already normalised to [0, 1]; ``alpha``
    is the weight of the heatmap.
    """
    img = display_image(image)
    cam = cam.detach().cpu().float()
    if cam.shape != img.shape:
        cam = upsample_cams(cam.unsqueeze(0), tuple(img.shape))[0]
    heat = plt.get_cmap("jet")(cam.clamp(0, 1).numpy())[..., :3]
    grey = np.repeat(img[..., None], 3, axis=2)
    return (1 - alpha) * grey + alpha * heat


def plot_cams(
    images: torch.Tensor,
    cams: torch.Tensor,
    titles: Sequence[str],
    title: str = "",
    ncols: int = 6,
    title_colors: Sequence[str] | None = None,
) -> Figure:
    """Each image above its Grad-CAM overlay (maps normalised to [0, 1] and upsampled)."""
    n = len(images)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(2 * nrows, ncols, figsize=(1.9 * ncols, 3.9 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k in range(n):
        r, c = 2 * (k // ncols), k % ncols
        axes[r, c].imshow(display_image(images[k]), cmap="gray_r", vmin=0, vmax=1)
        color = title_colors[k] if title_colors is not None else "black"
        axes[r, c].set_title(titles[k], fontsize=7, color=color)
        axes[r + 1, c].imshow(overlay(images[k], cams[k]))
        axes[r + 1, c].set_title("Grad-CAM", fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_cam_columns(
    images: torch.Tensor,
    columns: dict[str, torch.Tensor],
    row_labels: Sequence[str],
    title: str = "",
) -> Figure:
    """One row per image (``[N, 1, H, W]``, uint8 or normalised, captioned by ``row_labels``):
    the image, then its overlay for each ``columns`` entry (title → ``[N, h, w]`` maps, in [0, 1]).
    """
    n, ncols = len(images), 1 + len(columns)
    fig, axes = plt.subplots(n, ncols, figsize=(1.9 * ncols, 2.0 * n), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(display_image(images[i]), cmap="gray_r", vmin=0, vmax=1)
        axes[i, 0].set_title(row_labels[i], fontsize=7)
        for j, (name, cams) in enumerate(columns.items(), start=1):
            axes[i, j].imshow(overlay(images[i], cams[i]))
            if i == 0:
                axes[i, j].set_title(name, fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def randomize_weights(
    model: nn.Module, layers: Sequence[str] | None = None, seed: int = 0
) -> nn.Module:
    """A copy of ``model`` with the parameters of ``layers`` (default: all) re-initialised.

    Each named layer gets its ``reset_parameters()`` (PyTorch's default initialisation) under a
    fixed seed; the original model is not changed.
    """
    randomized = copy.deepcopy(model)
    modules = dict(randomized.named_modules())
    names = list(layers) if layers is not None else [n for n in modules if n]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in names:
            if name not in modules:
                raise ValueError(f"model has no layer {name!r}")
            if hasattr(modules[name], "reset_parameters"):
                modules[name].reset_parameters()
    return randomized


def _rank(x: torch.Tensor) -> torch.Tensor:
    """Ranks along the last dimension; tied values share their average rank."""
    return torch.from_numpy(rankdata(x.detach().cpu().double().numpy(), axis=-1))


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation between matching maps of ``a`` and ``b`` (``[N, ...]`` → ``[N]``).

    A constant map has no defined correlation: its entry is NaN.
    """
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).float()


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation between matching maps (``[N, ...]`` → ``[N]``); NaN if constant."""
    return pearson(_rank(a.flatten(1)), _rank(b.flatten(1)))


def torchcam_gradcam(
    model: nn.Module,
    layer: str,
    x: torch.Tensor,
    class_idx: Sequence[int] | torch.Tensor,
    method: str = "GradCAM",
) -> torch.Tensor:
    """Raw (unnormalised) maps ``[N, h, w]`` from ``torchcam.methods.<method>`` on ``layer``."""
    from torchcam import methods  # imported here: only chapter 10 needs torchcam

    with getattr(methods, method)(model, target_layer=layer) as extractor:
        scores = model(x)
        (maps,) = extractor([int(c) for c in class_idx], scores, normalized=False)
    return maps.detach()
