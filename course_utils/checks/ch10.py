"""Checks of the chapter 10 exercises: Grad-CAM: the weighting and the normalisation of maps."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ._common import (
    failure,
    passed,
    seeded_cnn,
)

__all__ = [
    "check_gradcam_weighting",
    "check_normalize_cams",
]


# --- 10.1 --------------------------------------------------------------------------------------


def _gradcam_fixture() -> tuple[nn.Module, torch.Tensor, list[int]]:
    model = seeded_cnn(10, width=8, hidden=32).eval()
    x = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(10))
    return model, x, [0, 3, 3, 7, 9]


def check_gradcam_weighting(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """Exercise 10.1: ``fn(activations, gradients) -> [N, h, w]``, the Grad-CAM weighting step.

    ``activations`` and ``gradients`` (``[N, K, h, w]``) are taken from ``act2`` of a small,
    seeded ``FashionCNN``; the result must equal torchcam's un-normalised ``GradCAM`` map.

    Raises:
        AssertionError: with a hint naming the likely mistake.
    """
    from ..cam import torchcam_gradcam

    ex = "10.1"
    model, x, classes = _gradcam_fixture()
    captured: list[torch.Tensor] = []
    hook = model.act2.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        logits = model(x)
    finally:
        hook.remove()
    score = logits.gather(1, torch.tensor(classes).view(-1, 1)).sum()
    (grads,) = torch.autograd.grad(score, captured[0])
    acts = captured[0].detach()
    expected = torchcam_gradcam(model, "act2", x, classes)
    try:
        result = fn(acts.clone(), grads.clone())
    except NotImplementedError:
        raise
    except Exception as err:
        raise failure(
            ex,
            f"raised {type(err).__name__}: {err}",
            "weights = gradients.mean(dim=(2, 3), keepdim=True) has shape [N, K, 1, 1] and "
            "broadcasts against activations [N, K, h, w].",
        ) from err
    if not isinstance(result, torch.Tensor) or tuple(result.shape) != tuple(expected.shape):
        shape = tuple(result.shape) if isinstance(result, torch.Tensor) else type(result).__name__
        raise failure(
            ex,
            f"returned {shape}, expected a tensor of shape {tuple(expected.shape)}",
            "sum the weighted activations over the channel dimension (dim=1).",
        )
    result = result.detach().float()
    if torch.allclose(result, expected, rtol=1e-4, atol=1e-6):
        passed(
            ex,
            "your maps equal torchcam's GradCAM on act2 for 5 images (within 1e-4 relative)",
        )
        return
    h, w = acts.shape[-2:]
    if (result < 0).any():
        hint = "apply a ReLU to the weighted sum: Grad-CAM keeps only positive evidence."
    elif torch.allclose(result, expected * h * w, rtol=1e-4, atol=1e-5):
        hint = "the channel weight is the *mean* of the gradient over (h, w), not the sum."
    else:
        hint = (
            "weight each channel k by the spatial mean of its *gradient*, multiply with the "
            "*activations*, sum over channels, then ReLU."
        )
    diff = float((result - expected).abs().max())
    raise failure(ex, f"maps differ from torchcam's by up to {diff:.3g}", hint)


# --- 10.2 --------------------------------------------------------------------------------------


def check_normalize_cams(fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Exercise 10.2: ``fn(cams)`` scales each map of ``[N, h, w]`` to [0, 1] on its own.

    Compared with :func:`course_utils.cam.normalize_cams` on maps of different ranges, one
    constant map (→ zeros, not NaN) and one with negative values.

    Raises:
        AssertionError: with a hint naming the likely mistake.
    """
    from ..cam import normalize_cams

    ex = "10.2"
    generator = torch.Generator().manual_seed(11)
    cams = torch.rand(4, 7, 7, generator=generator) * torch.tensor([1.0, 5.0, 0.01, 1.0]).view(
        -1, 1, 1
    )
    cams[2] += 3.0  # a map far from zero
    cams[3] = 0.25  # a constant map
    cams = torch.cat([cams, torch.randn(1, 7, 7, generator=generator)])  # negative values
    expected = normalize_cams(cams)
    try:
        result = fn(cams.clone())
    except NotImplementedError:
        raise
    except Exception as err:
        raise failure(
            ex,
            f"raised {type(err).__name__}: {err}",
            "reduce over each map's own pixels: cams.flatten(1).amin(1) gives one minimum per map.",
        ) from err
    if not isinstance(result, torch.Tensor) or result.shape != cams.shape:
        raise failure(
            ex,
            f"returned {getattr(result, 'shape', type(result).__name__)}, "
            f"expected {tuple(cams.shape)}",
            "return one normalised map per input map.",
        )
    if torch.isnan(result).any():
        raise failure(
            ex,
            "the constant map became NaN",
            "add a small eps to the denominator (max - min + 1e-8): a constant map becomes zeros.",
        )
    if torch.allclose(result, expected, atol=1e-5):
        passed(ex, "each map is scaled to [0, 1] on its own, and a constant map gives zeros")
        return
    per_map_max = cams.flatten(1).amax(1).view(-1, 1, 1)
    variants = {
        "normalise each map with its own minimum and maximum, not the whole batch's.": (
            cams - cams.min()
        )
        / (cams.max() - cams.min()),
        "subtract each map's minimum first, then divide by the new maximum.": cams
        / (per_map_max + 1e-8),
    }
    hint = next(
        (h for h, v in variants.items() if torch.allclose(result, v, atol=1e-5)),
        "per map: (cam - cam.min()) / (cam.max() - cam.min() + eps).",
    )
    raise failure(ex, "normalised maps differ from the reference", hint)
