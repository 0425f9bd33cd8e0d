"""Checks of the chapter 10 exercises: Grad-CAM's counterfactual weighting, the per-map
normalisation, and a Grad-CAM class with both hooks for any layer of a model."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import nn

from .. import cam
from ..cam import normalize_cams  # bound here: the check uses it while cam's is refused
from ..hooks import hook_count
from ._common import aliases, call, ensure, failure, first_hint, passed, refuse, seeded_cnn

__all__ = ["check_counterfactual_weighting", "check_layer_gradcam", "check_normalize_cams"]

LAYERS_CHECKED = ("conv1", "act2")


def _refused(ex: str, task: str, answer: object) -> AbstractContextManager[None]:
    """Refuse the course's Grad-CAM code and torchcam's methods (also as the answer itself)."""
    import torchcam.methods

    shortcuts = [
        (cam, n) for n in ("GradCAM", "gradcam_from", "normalize_cams", "torchcam_gradcam")
    ]
    shortcuts += [(torchcam.methods, n) for n in dir(torchcam.methods) if n[0].isupper()]
    for owner, name in shortcuts:
        if answer is getattr(owner, name):
            label = f"{owner.__name__}.{name}"
            raise failure(ex, f"your answer is {label}", f"write {task} yourself, not {label}.")
    return refuse(ex, shortcuts + aliases([answer], shortcuts), task)


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-6) -> bool:
    return torch.allclose(a, b, rtol=1e-4, atol=atol)


def _tensor_like(ex: str, got: object, want: torch.Tensor, hint: str) -> torch.Tensor:
    """``got`` as a float tensor, after a ❌ unless it is a tensor of ``want``'s shape."""
    ok = isinstance(got, torch.Tensor) and got.shape == want.shape
    shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
    ensure(ex, (ok, f"returned {shape}, expected a tensor of shape {tuple(want.shape)}", hint))
    return got.detach().float()


def _fixture() -> tuple[nn.Module, torch.Tensor, list[int]]:
    x = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(10))
    return seeded_cnn(10, width=8, hidden=32).eval(), x, [0, 3, 3, 7, 9]


def check_counterfactual_weighting(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> None:
    """Exercise 10.1: ``fn(A, dy_c/dA)`` is ``ReLU(sum_k -mean(dy_c/dA_k) A_k)`` on ``act2``."""
    ex = "10.1"
    model, x, classes = _fixture()
    with cam.GradCAM(model, "act2") as reference:
        reference(x, classes)
        acts, grads = reference.activations, reference.gradients
    gradcam = cam.torchcam_gradcam(model, "act2", x, classes)
    expected = cam.gradcam_from(acts, -grads)
    with _refused(ex, "the weighting", fn):
        hint = "weights = -gradients.mean(dim=(2, 3), keepdim=True) broadcasts against A."
        result = call(ex, "your function", fn, acts.clone(), grads.clone(), hint=hint)
    result = _tensor_like(ex, result, expected, "sum the weighted activations over dim=1.")
    if _close(result, expected):
        overlap = int(((result > 0) & (gradcam > 0)).sum())
        passed(
            ex,
            f"your maps equal the counterfactual reference on act2 for 5 images, and share "
            f"{overlap} positive pixels with torchcam's GradCAM map",
        )
        return
    hint = first_hint(
        (_close(result, gradcam), "that is the ordinary Grad-CAM map: negate the weights."),
        (_close(result, -gradcam), "negate before the ReLU: ReLU(-S), not -ReLU(S)."),
        ((result < 0).any(), "apply a ReLU to the weighted sum."),
        (_close(result, expected * acts[0, 0].numel(), 1e-5), "weigh by the *mean*, not the sum."),
        (True, "weigh each channel by minus the mean of its *gradient*, sum, then ReLU."),
    )
    diff = float((result - expected).abs().max())
    raise failure(ex, f"maps differ from the counterfactual reference by up to {diff:.3g}", hint)


def check_normalize_cams(fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Exercise 10.2: ``fn(cams)`` scales each map to [0, 1] on its own, as ``normalize_cams``."""
    ex = "10.2"
    g = torch.Generator().manual_seed(11)
    cams = torch.rand(4, 7, 7, generator=g) * torch.tensor([1.0, 5.0, 0.01, 1.0]).view(-1, 1, 1)
    cams[2] += 3.0  # a map far from zero
    cams[3] = 0.25  # a constant map
    cams = torch.cat([cams, torch.randn(1, 7, 7, generator=g)])  # negative values
    expected = cam.normalize_cams(cams)
    with _refused(ex, "the normalisation", fn):
        hint = "reduce over each map's own pixels: cams.flatten(1).amin(1)."
        result = call(ex, "your function", fn, cams.clone(), hint=hint)
    result = _tensor_like(ex, result, expected, "return one normalised map per input map.")
    nan = result.isnan().any()
    ensure(ex, (not nan, "the constant map became NaN", "add an eps: max - min + 1e-8."))
    if torch.allclose(result, expected, atol=1e-5):
        passed(ex, "each map is scaled to [0, 1] on its own, and a constant map gives zeros")
        return
    per_batch = (cams - cams.min()) / (cams.max() - cams.min())
    no_min = cams / (cams.flatten(1).amax(1).view(-1, 1, 1) + 1e-8)
    hint = first_hint(
        (torch.allclose(result, per_batch, atol=1e-5), "use each map's own minimum and maximum."),
        (torch.allclose(result, no_min, atol=1e-5), "subtract each map's minimum first."),
        (True, "per map: (cam - cam.min()) / (cam.max() - cam.min() + eps)."),
    )
    worst = int((result - expected).flatten(1).abs().amax(1).argmax())
    raise failure(ex, f"normalised maps differ from the reference (worst: map {worst})", hint)


def check_layer_gradcam(cam_cls: type) -> None:
    """Exercise 10.3: ``with cam_cls(model, layer) as c: c(x, class_idx)`` is torchcam's Grad-CAM
    on ``conv1`` and ``act2``, with exactly one forward and one full backward hook inside the
    block and none after it (also after an exception or two ``remove()``), and no ``.grad``."""
    ex, name = "10.3", getattr(cam_cls, "__name__", repr(cam_cls))
    model, x, classes = _fixture()
    expected = {layer: cam.torchcam_gradcam(model, layer, x, classes) for layer in LAYERS_CHECKED}
    with _refused(ex, "Grad-CAM", cam_cls):
        for layer in LAYERS_CHECKED:
            hint = "the constructor takes the model and a layer name."
            c = call(ex, f"{name}(model, {layer!r})", cam_cls, model, layer, hint=hint)
            ensure(ex, (not hook_count(model), "hooks before `with`", "add them in __enter__."))
            with c as entered:
                module = model.get_submodule(layer)
                hooks = (len(module._forward_hooks), len(module._backward_hooks))
                problem = (
                    f"in `with`: {hooks[0]} forward and {hooks[1]} backward hook(s) on {layer!r}, "
                    f"{hook_count(model)} on the model; expected one of each, on that layer"
                )
                hint = "in __enter__: register_forward_hook and register_full_backward_hook."
                ensure(ex, (hooks == (1, 1) and hook_count(model) == 2, problem, hint))
                hint = "take the score of class_idx[i] for image i and back-propagate it."
                entered = c if entered is None else entered
                maps = call(
                    ex, f"cam(x, {classes})", entered, x.clone(), torch.tensor(classes), hint=hint
                )
            _check_maps(ex, layer, maps, expected[layer], classes)
            clean, no_grad = not hook_count(model), all(p.grad is None for p in model.parameters())
            ensure(
                ex,
                (clean, "hook(s) left after `with`", "__exit__ must call remove()."),
                (no_grad, "parameters have a .grad", "use torch.autograd.grad, not .backward()."),
            )
        _check_cleanup(ex, name, cam_cls, model)
    passed(
        ex,
        f"{name} matches torchcam's GradCAM on {' and '.join(LAYERS_CHECKED)} for one class "
        "per image, with one forward and one backward hook, none left after `with` (also after "
        "an exception), and remove() twice is safe",
    )


def _check_maps(ex: str, layer: str, maps: object, want: torch.Tensor, classes: list[int]) -> None:
    """The maps of ``cam(x, class_idx)`` on ``layer`` equal torchcam's ``want``."""
    hint = "return only the maps [N, h, w], not (maps, logits)."
    ensure(ex, (not isinstance(maps, tuple), f"cam(...) returned a tuple on {layer!r}", hint))
    maps = _tensor_like(ex, maps, want, "one map per image, [N, h, w].")
    if _close(maps, want):
        return
    worst = int((maps - want).flatten(1).abs().amax(1).argmax())
    hint = first_hint(
        ((maps < 0).any(), "apply a ReLU to the weighted sum."),
        (_close(maps, normalize_cams(want), 1e-5), "return the raw maps, not normalised."),
        (True, f"use class_idx[i] for image i: image {worst} asks for class {classes[worst]}."),
    )
    diff = float((maps - want).abs().max())
    raise failure(ex, f"on {layer!r}, maps differ from torchcam's by up to {diff:.3g}", hint)


def _check_cleanup(ex: str, name: str, cam_cls: type, model: nn.Module) -> None:
    """No hook after an exception inside ``with``; ``remove()`` twice is safe; unknown layers."""
    planted = type("PlantedByTheCheck", (Exception,), {})
    with contextlib.suppress(planted), cam_cls(model, "act2"):
        raise planted  # inside the learner's block
    hint = "__exit__ runs also when the block raises: remove the hooks there."
    ensure(ex, (not hook_count(model), "hook(s) left after an error inside `with`", hint))
    c = cam_cls(model, "act2")
    c.__enter__()
    for attempt in ("first", "second"):
        call(ex, f"the {attempt} cam.remove()", c.remove, hint="make remove() idempotent.")
    ensure(ex, (not hook_count(model), "hook(s) left after remove()", "remove both hooks."))
    try:
        cam_cls(model, "conv9")
        err: Exception | None = None
    except Exception as raised:  # noqa: BLE001 - anything but a ValueError naming it is wrong
        err = raised
    got = "nothing" if err is None else f"{type(err).__name__}: {err}"
    hint = "raise ValueError(f'model has no layer {name!r}') for an unknown layer name."
    ok = isinstance(err, ValueError) and "conv9" in str(err)
    ensure(ex, (ok, f"{name}(model, 'conv9') raised {got}", hint))
