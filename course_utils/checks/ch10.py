"""Checks of the chapter 10 exercises: Grad-CAM's counterfactual weighting, the per-map
normalisation, and a Grad-CAM class with both hooks for any layer of a model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import torch
from torch import nn

from ..hooks import hook_count
from ._common import (
    aliases,
    call,
    failure,
    passed,
    refuse,
    seeded_cnn,
)

__all__ = [
    "check_counterfactual_weighting",
    "check_layer_gradcam",
    "check_normalize_cams",
]


def _shortcuts() -> list[tuple[object, str]]:
    """The course's Grad-CAM code and torchcam's methods: what the chapter-10 tasks ask you to
    write yourself."""
    import torchcam.methods

    from .. import cam

    names = ["GradCAM", "gradcam_from", "normalize_cams", "torchcam_gradcam"]
    torchcam_names = [n for n in dir(torchcam.methods) if n[0].isupper()]
    return [(cam, n) for n in names] + [(torchcam.methods, n) for n in torchcam_names]


def _refused(ex: str, task: str, answer: object) -> AbstractContextManager[None]:
    """:func:`refuse` of :func:`_shortcuts`, also where the learner's namespace imported them.

    Raises:
        AssertionError: the answer *is* one of the shortcuts.
    """
    shortcuts = _shortcuts()
    for owner, name in shortcuts:
        if answer is getattr(owner, name, None):
            label = f"{getattr(owner, '__name__', '')}.{name}"
            raise failure(
                ex,
                f"your answer is {label}",
                f"this task asks you to write {task} yourself; {label} is switched off "
                "while the check runs.",
            )
    return refuse(ex, shortcuts + aliases([answer], shortcuts), task)


def _fixture() -> tuple[nn.Module, torch.Tensor, list[int]]:
    model = seeded_cnn(10, width=8, hidden=32).eval()
    x = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(10))
    return model, x, [0, 3, 3, 7, 9]


def _activations_and_gradients(
    model: nn.Module, layer: str, x: torch.Tensor, classes: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``A`` of ``layer`` and ``d(sum of the class scores)/dA``, both ``[N, K, h, w]``."""
    captured: list[torch.Tensor] = []
    module = dict(model.named_modules())[layer]
    hook = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        logits = model(x)
    finally:
        hook.remove()
    score = logits.gather(1, torch.tensor(classes).view(-1, 1)).sum()
    (grads,) = torch.autograd.grad(score, captured[0])
    return captured[0].detach(), grads


# --- 10.1 --------------------------------------------------------------------------------------


def check_counterfactual_weighting(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> None:
    """Exercise 10.1: ``fn(activations, gradients) -> [N, h, w]``, the counterfactual map.

    The regions that speak *against* the class: ``ReLU(sum_k -mean(dy_c/dA_k) A_k)``, with
    ``A`` and its gradient from ``act2`` of a small seeded ``FashionCNN``. Its support must not
    overlap torchcam's ``GradCAM`` map (computed first), and the course's ``gradcam_from`` and
    torchcam are switched off while ``fn`` runs.

    Raises:
        AssertionError: with a hint naming the likely mistake.
    """
    from ..cam import torchcam_gradcam

    ex = "10.1"
    model, x, classes = _fixture()
    acts, grads = _activations_and_gradients(model, "act2", x, classes)
    gradcam = torchcam_gradcam(model, "act2", x, classes)
    weighted = (grads.mean(dim=(2, 3), keepdim=True) * acts).sum(dim=1)
    expected = torch.relu(-weighted)
    with _refused(ex, "the weighting", fn):
        result = call(
            ex,
            "your function",
            fn,
            acts.clone(),
            grads.clone(),
            hint="weights = -gradients.mean(dim=(2, 3), keepdim=True) has shape [N, K, 1, 1] "
            "and broadcasts against activations [N, K, h, w].",
        )
    if not isinstance(result, torch.Tensor) or tuple(result.shape) != tuple(expected.shape):
        shape = tuple(result.shape) if isinstance(result, torch.Tensor) else type(result).__name__
        raise failure(
            ex,
            f"returned {shape}, expected a tensor of shape {tuple(expected.shape)}",
            "sum the weighted activations over the channel dimension (dim=1).",
        )
    result = result.detach().float()
    if torch.allclose(result, expected, rtol=1e-4, atol=1e-6):
        overlap = int(((result > 0) & (gradcam > 0)).sum())
        passed(
            ex,
            f"your maps equal the counterfactual reference on act2 for 5 images, and share "
            f"{overlap} positive pixels with torchcam's GradCAM map",
        )
        return
    h, w = acts.shape[-2:]
    if torch.allclose(result, gradcam, rtol=1e-4, atol=1e-6):
        hint = "that is the ordinary Grad-CAM map: negate the channel weights (-mean gradient)."
    elif torch.allclose(result, -gradcam, rtol=1e-4, atol=1e-6):
        hint = "negate before the ReLU: ReLU(-S), not -ReLU(S)."
    elif (result < 0).any():
        hint = "apply a ReLU to the weighted sum: keep only the evidence against the class."
    elif torch.allclose(result, expected * h * w, rtol=1e-4, atol=1e-5):
        hint = "the channel weight is the *mean* of the gradient over (h, w), not the sum."
    else:
        hint = (
            "weight each channel k by minus the spatial mean of its *gradient*, multiply with "
            "the *activations*, sum over channels, then ReLU."
        )
    diff = float((result - expected).abs().max())
    raise failure(ex, f"maps differ from the counterfactual reference by up to {diff:.3g}", hint)


# --- 10.2 --------------------------------------------------------------------------------------


def check_normalize_cams(fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Exercise 10.2: ``fn(cams)`` scales each map of ``[N, h, w]`` to [0, 1] on its own.

    Compared with :func:`course_utils.cam.normalize_cams` (computed first, then switched off
    with the rest of the course's Grad-CAM code and torchcam) on maps of different ranges, one
    constant map (→ zeros, not NaN) and one with negative values.

    Raises:
        AssertionError: with a hint naming the likely mistake.
    """
    from ..cam import normalize_cams

    ex = "10.2"
    generator = torch.Generator().manual_seed(11)
    scales = torch.tensor([1.0, 5.0, 0.01, 1.0]).view(-1, 1, 1)
    cams = torch.rand(4, 7, 7, generator=generator) * scales
    cams[2] += 3.0  # a map far from zero
    cams[3] = 0.25  # a constant map
    cams = torch.cat([cams, torch.randn(1, 7, 7, generator=generator)])  # negative values
    expected = normalize_cams(cams)
    with _refused(ex, "the normalisation", fn):
        result = call(
            ex,
            "your function",
            fn,
            cams.clone(),
            hint="reduce over each map's own pixels: cams.flatten(1).amin(1) gives one "
            "minimum per map.",
        )
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
    worst = int((result - expected).flatten(1).abs().amax(1).argmax())
    raise failure(ex, f"normalised maps differ from the reference (worst: map {worst})", hint)


# --- 10.3 --------------------------------------------------------------------------------------

LAYERS_CHECKED = ("conv1", "act2")


def _layer_hooks(module: nn.Module) -> tuple[int, int]:
    return len(module._forward_hooks), len(module._backward_hooks)


def check_layer_gradcam(cam_cls: type) -> None:
    """Exercise 10.3: ``cam_cls(model, layer_name)``, Grad-CAM for any layer, with both hooks.

    On a small seeded ``FashionCNN`` the check asks, for ``conv1`` and ``act2``: ``with
    cam_cls(model, name) as cam: maps = cam(x, class_idx)`` with one class per image. The maps
    must equal torchcam's ``GradCAM`` (computed before the check switches torchcam and the
    course's ``GradCAM`` off); inside the block the layer holds one forward and one full backward
    hook and no others; after it, and after an exception inside it, no hook is left; the
    parameters get no ``.grad``; ``remove()`` can be called twice; an unknown layer name raises
    a ``ValueError`` that names it.

    Raises:
        AssertionError: with a hint naming the likely mistake.
    """
    from ..cam import torchcam_gradcam

    ex = "10.3"
    name = getattr(cam_cls, "__name__", repr(cam_cls))
    model, x, classes = _fixture()
    expected = {layer: torchcam_gradcam(model, layer, x, classes) for layer in LAYERS_CHECKED}
    modules = dict(model.named_modules())
    with _refused(ex, "Grad-CAM", cam_cls):
        for layer in LAYERS_CHECKED:
            cam = call(
                ex,
                f"{name}(model, {layer!r})",
                cam_cls,
                model,
                layer,
                hint="the constructor takes the model and a layer name.",
            )
            if hook_count(model):
                raise failure(
                    ex,
                    f"{name}(model, {layer!r}) registered hooks before the `with` block",
                    "register the hooks in __enter__, so that they live only inside `with`.",
                )
            with cam as entered:
                hooks = _layer_hooks(modules[layer])
                if hooks != (1, 1) or hook_count(model) != 2:
                    raise failure(
                        ex,
                        f"inside `with` on {layer!r}: {hooks[0]} forward and {hooks[1]} "
                        f"backward hook(s) on the layer, {hook_count(model)} on the model; "
                        "expected exactly one of each, on that layer",
                        "in __enter__: layer.register_forward_hook(...) and "
                        "layer.register_full_backward_hook(...); keep both handles.",
                    )
                entered = entered if entered is not None else cam
                maps = call(
                    ex,
                    f"cam(x, class_idx={classes})",
                    entered,
                    x.clone(),
                    torch.tensor(classes),
                    hint="__call__ runs the model, takes the score of class_idx[i] for image "
                    "i, and back-propagates it (torch.autograd.grad).",
                )
            _check_maps(ex, layer, maps, expected[layer], classes)
            if hook_count(model):
                raise failure(
                    ex,
                    f"{hook_count(model)} hook(s) left on the model after the `with` block",
                    "__exit__ must call remove(), which removes both handles.",
                )
            if any(p.grad is not None for p in model.parameters()):
                raise failure(
                    ex,
                    "the model's parameters have a .grad after cam(...)",
                    "use torch.autograd.grad(score, x) with x.requires_grad_(True) instead of "
                    "score.backward(): Grad-CAM must not leave gradients on the model.",
                )
        _check_cleanup(ex, name, cam_cls, model)
    passed(
        ex,
        f"{name} matches torchcam's GradCAM on {' and '.join(LAYERS_CHECKED)} for one class "
        "per image, with one forward and one backward hook, none left after `with` (also after "
        "an exception), and remove() twice is safe",
    )


def _check_maps(
    ex: str, layer: str, maps: object, expected: torch.Tensor, classes: Sequence[int]
) -> None:
    if isinstance(maps, tuple):
        raise failure(
            ex,
            f"cam(x, class_idx) returned a tuple of {len(maps)} on {layer!r}",
            "this task's cam(...) returns only the maps [N, h, w], not (maps, logits).",
        )
    if not isinstance(maps, torch.Tensor) or maps.shape != expected.shape:
        got = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise failure(
            ex,
            f"on {layer!r}: got {got}, expected maps of shape {tuple(expected.shape)}",
            "one map per image: the weighted sum over channels has shape [N, h, w].",
        )
    maps = maps.detach().float()
    if torch.allclose(maps, expected, rtol=1e-4, atol=1e-6):
        return
    worst = int((maps - expected).flatten(1).abs().amax(1).argmax())
    diff = float((maps - expected).abs().max())
    if (maps < 0).any():
        hint = "apply a ReLU to the weighted sum."
    elif torch.allclose(maps, expected / (expected.flatten(1).amax(1).view(-1, 1, 1) + 1e-8)):
        hint = "return the raw maps; do not normalise them here."
    else:
        hint = (
            f"take the score of class_idx[i] for image i (logits.gather(1, ...)); image {worst} "
            f"asks for class {classes[worst]}, not its predicted class."
        )
    raise failure(
        ex,
        f"on {layer!r}, maps differ from torchcam's by up to {diff:.3g} (worst: image {worst})",
        hint,
    )


class _PlantedError(Exception):
    """The error the check raises inside the learner's ``with`` block."""


def _check_cleanup(ex: str, name: str, cam_cls: type, model: nn.Module) -> None:
    """No hook after an exception inside ``with``; ``remove()`` twice is safe."""
    try:
        with cam_cls(model, "act2"):
            raise _PlantedError  # raised by the check, inside the learner's block
    except _PlantedError:
        pass
    if hook_count(model):
        raise failure(
            ex,
            f"{hook_count(model)} hook(s) left after an exception inside the `with` block",
            "__exit__ runs also when the block raises: remove the hooks there, and do not "
            "return True (that would swallow the error).",
        )
    cam = cam_cls(model, "act2")
    cam.__enter__()
    for attempt in ("first", "second"):
        call(
            ex,
            f"the {attempt} cam.remove()",
            cam.remove,
            hint="make remove() idempotent: clear the list of handles after removing them.",
        )
    if hook_count(model):
        raise failure(
            ex,
            f"{hook_count(model)} hook(s) left after cam.remove()",
            "remove() must remove both hooks.",
        )
    try:
        cam_cls(model, "conv9")
    except ValueError as err:
        if "conv9" not in str(err):
            raise failure(
                ex,
                f"{name}(model, 'conv9') raised ValueError({str(err)!r})",
                "name the unknown layer in the message (and list the valid names).",
            ) from err
    except Exception as err:
        raise failure(
            ex,
            f"{name}(model, 'conv9') raised {type(err).__name__}: {err}",
            'raise ValueError(f"model has no layer {name!r}; choose one of ...") for an '
            "unknown name.",
        ) from err
    else:
        raise failure(
            ex,
            f"{name}(model, 'conv9') raised nothing for a layer that does not exist",
            "look the name up in dict(model.named_modules()) and raise ValueError if absent.",
        )
