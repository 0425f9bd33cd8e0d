"""Chapter 10 ``check_*`` helpers: the right answer passes, each typical mistake and each
shortcut (the course's Grad-CAM code, torchcam) fails."""

from __future__ import annotations

import pytest
import torch
import torchcam.methods
from checks_support import fails, passes
from torch import nn

import course_utils.cam
from course_utils.cam import gradcam_from, normalize_cams
from course_utils.checks.ch10 import (
    check_counterfactual_weighting,
    check_layer_gradcam,
    check_normalize_cams,
)

ORIGINALS = {
    "gradcam_from": course_utils.cam.gradcam_from,
    "normalize_cams": course_utils.cam.normalize_cams,
    "GradCAM": course_utils.cam.GradCAM,
    "torchcam.GradCAM": torchcam.methods.GradCAM,
}


@pytest.fixture(autouse=True)
def library_restored():
    """After every test, the switched-off shortcuts are back (also after a refusal)."""
    yield
    assert course_utils.cam.gradcam_from is ORIGINALS["gradcam_from"]
    assert course_utils.cam.normalize_cams is ORIGINALS["normalize_cams"]
    assert course_utils.cam.GradCAM is ORIGINALS["GradCAM"]
    assert torchcam.methods.GradCAM is ORIGINALS["torchcam.GradCAM"]
    assert globals()["gradcam_from"] is ORIGINALS["gradcam_from"]


# --- 10.1 --------------------------------------------------------------------------------------


def counterfactual(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return torch.relu((-g.mean((2, 3), keepdim=True) * a).sum(1))


def test_counterfactual_right_answer_passes(capsys) -> None:
    passes(check_counterfactual_weighting, counterfactual, "10.1", capsys)


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda a, g: torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1)), "ordinary Grad"),
        (lambda a, g: (-g.mean((2, 3), keepdim=True) * a).sum(1), "apply a ReLU"),
        (lambda a, g: torch.relu((-g.sum((2, 3), keepdim=True) * a).sum(1)), "*mean*"),
        (lambda a, g: -torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1)), "ReLU(-S)"),
        (lambda a, g: torch.relu(-g.mean((2, 3), keepdim=True) * a), "dim=1"),
        (lambda a, g: torch.relu((-a.mean((2, 3), keepdim=True) * g).sum(1)), "*gradient*"),
    ],
    ids=[
        "not negated",
        "no relu",
        "sum not mean",
        "negated after relu",
        "no channel sum",
        "swapped",
    ],
)
def test_counterfactual_wrong_answers_fail(wrong, hint: str, capsys) -> None:
    fails(check_counterfactual_weighting, wrong, hint, "10.1", capsys)


def via_module(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return course_utils.cam.gradcam_from(a, -g)


def via_imported_name(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return gradcam_from(a, -g)  # `from course_utils.cam import gradcam_from`


@pytest.mark.parametrize(
    ("shortcut", "label"),
    [(via_module, "gradcam_from"), (via_imported_name, "gradcam_from")],
    ids=["cam.gradcam_from", "imported gradcam_from"],
)
def test_counterfactual_shortcuts_are_refused(shortcut, label: str, capsys) -> None:
    fails(check_counterfactual_weighting, shortcut, label, "10.1", capsys)


# --- 10.2 --------------------------------------------------------------------------------------


def normalize(c: torch.Tensor) -> torch.Tensor:
    low = c.flatten(1).amin(1).view(-1, 1, 1)
    return (c - low) / ((c - low).flatten(1).amax(1).view(-1, 1, 1) + 1e-8)


def test_normalize_right_answer_passes(capsys) -> None:
    passes(check_normalize_cams, normalize, "10.2", capsys)


def per_batch(c: torch.Tensor) -> torch.Tensor:
    return (c - c.min()) / (c.max() - c.min())


def no_min(c: torch.Tensor) -> torch.Tensor:
    return c / (c.flatten(1).amax(1).view(-1, 1, 1) + 1e-8)


def no_eps(c: torch.Tensor) -> torch.Tensor:
    low = c.flatten(1).amin(1).view(-1, 1, 1)
    return (c - low) / (c.flatten(1).amax(1).view(-1, 1, 1) - low)


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (per_batch, "own minimum"),
        (no_min, "minimum first"),
        (no_eps, "eps"),
        (torch.sigmoid, "per map"),
    ],
    ids=["whole batch", "no minimum", "no eps", "sigmoid"],
)
def test_normalize_wrong_answers_fail(wrong, hint: str, capsys) -> None:
    fails(check_normalize_cams, wrong, hint, "10.2", capsys)


@pytest.mark.parametrize(
    "shortcut",
    [normalize_cams, lambda c: course_utils.cam.normalize_cams(c)],
    ids=["normalize_cams itself", "calls cam.normalize_cams"],
)
def test_normalize_shortcuts_are_refused(shortcut, capsys) -> None:
    fails(check_normalize_cams, shortcut, "normalize_cams", "10.2", capsys)


# --- 10.3 --------------------------------------------------------------------------------------


class LayerGradCAM:
    """The honest answer (as in the solution notebook)."""

    def __init__(self, model: nn.Module, layer_name: str) -> None:
        modules = dict(model.named_modules())
        if layer_name not in modules:
            raise ValueError(f"model has no layer {layer_name!r}")
        self.model, self.layer = model, modules[layer_name]
        self.handles: list = []
        self.activations = self.gradients = None

    def save_activations(self, module, inputs, output) -> None:
        self.activations = output.detach()

    def save_gradients(self, module, grad_inputs, grad_outputs) -> None:
        self.gradients = grad_outputs[0].detach()

    def __enter__(self) -> LayerGradCAM:
        self.handles = [
            self.layer.register_forward_hook(self.save_activations),
            self.layer.register_full_backward_hook(self.save_gradients),
        ]
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def scores(self, x: torch.Tensor, class_idx) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        logits = self.model(x)
        target = torch.as_tensor(class_idx).view(-1, 1)
        torch.autograd.grad(logits.gather(1, target).sum(), x)
        return logits

    def __call__(self, x: torch.Tensor, class_idx) -> torch.Tensor:
        self.scores(x, class_idx)
        weights = self.gradients.mean(dim=(2, 3), keepdim=True)
        return torch.relu((weights * self.activations).sum(dim=1))


def test_layer_gradcam_right_answer_passes(capsys) -> None:
    passes(check_layer_gradcam, LayerGradCAM, "10.3", capsys)


class ReturnsLogitsToo(LayerGradCAM):
    def __call__(self, x, class_idx):
        return super().__call__(x, class_idx), None


class PredictedClass(LayerGradCAM):
    def __call__(self, x, class_idx):
        return super().__call__(x, self.model(x).argmax(1))


class NoRelu(LayerGradCAM):
    def __call__(self, x, class_idx):
        self.scores(x, class_idx)
        return (self.gradients.mean(dim=(2, 3), keepdim=True) * self.activations).sum(1)


class Normalised(LayerGradCAM):
    def __call__(self, x, class_idx):
        return normalize(super().__call__(x, class_idx))


class HooksInInit(LayerGradCAM):
    def __init__(self, model, layer_name):
        super().__init__(model, layer_name)
        super().__enter__()

    def __enter__(self):
        return self


class NoRemoveOnExit(LayerGradCAM):
    def __exit__(self, *exc_info) -> None:
        pass


class RemovesOnlyOnSuccess(LayerGradCAM):
    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.remove()


class RemoveNotIdempotent(LayerGradCAM):
    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        del self.handles


class TensorHookInstead(LayerGradCAM):
    """A forward hook that registers a tensor hook: no full backward hook on the layer."""

    def save_activations(self, module, inputs, output) -> None:
        self.activations = output.detach()
        output.register_hook(self.save_tensor_gradient)

    def save_tensor_gradient(self, grad) -> None:
        self.gradients = grad.detach()

    def __enter__(self):
        self.handles = [self.layer.register_forward_hook(self.save_activations)]
        return self


class BackwardLeavesGrad(LayerGradCAM):
    def scores(self, x, class_idx):
        logits = self.model(x)
        logits.gather(1, torch.as_tensor(class_idx).view(-1, 1)).sum().backward()
        return logits


class KeyErrorForUnknownLayer(LayerGradCAM):
    def __init__(self, model, layer_name):
        self.model, self.layer = model, dict(model.named_modules())[layer_name]
        self.handles = []


class OnlyAct2(LayerGradCAM):
    def __init__(self, model, layer_name):
        super().__init__(model, "act2")


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (ReturnsLogitsToo, "not (maps, logits)"),
        (PredictedClass, "class_idx[i]"),
        (NoRelu, "apply a ReLU"),
        (Normalised, "raw maps"),
        (HooksInInit, "__enter__"),
        (NoRemoveOnExit, "__exit__ must call remove()"),
        (RemovesOnlyOnSuccess, "also when the block raises"),
        (RemoveNotIdempotent, "idempotent"),
        (TensorHookInstead, "register_full_backward_hook"),
        (BackwardLeavesGrad, "torch.autograd.grad"),
        (KeyErrorForUnknownLayer, "raise ValueError"),
        (OnlyAct2, "on that layer"),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else None,
)
def test_layer_gradcam_wrong_answers_fail(wrong, hint: str, capsys) -> None:
    fails(check_layer_gradcam, wrong, hint, "10.3", capsys)


class WrapsCourseGradCAM(course_utils.cam.GradCAM):
    def __call__(self, x, class_idx):
        return super().__call__(x, class_idx)[0]


class WrapsTorchcam(LayerGradCAM):
    def __call__(self, x, class_idx):
        self.remove()  # torchcam brings its own hooks
        with torchcam.methods.GradCAM(self.model, target_layer=self.layer) as extractor:
            (maps,) = extractor(list(map(int, class_idx)), self.model(x), normalized=False)
        return maps


@pytest.mark.parametrize(
    ("shortcut", "label"),
    [
        (course_utils.cam.GradCAM, "GradCAM"),
        (WrapsCourseGradCAM, "gradcam_from"),
        (WrapsTorchcam, "torchcam"),
    ],
    ids=["cam.GradCAM itself", "subclass of cam.GradCAM", "torchcam GradCAM"],
)
def test_layer_gradcam_shortcuts_are_refused(shortcut, label: str, capsys) -> None:
    fails(check_layer_gradcam, shortcut, label, "10.3", capsys)
