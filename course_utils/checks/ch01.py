"""Checks of exercises 1.1–1.3: conv shapes, the dynamic flatten, per-class accuracy
(1.4, the loops: :mod:`course_utils.checks.ch01_loops`)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import confusion_matrix
from torch import nn

from ..hooks import capture_activations
from ..inspection import stage_activations
from ..models import FashionCNN
from ._common import build_model, call, failure, passed

__all__ = ["STAGES", "check_conv_shapes", "check_dynamic_flatten", "check_per_class_accuracy"]

STAGES: tuple[str, ...] = ("conv1", "pool1", "conv2", "pool2", "flatten", "flatten_36")
_POOL = "MaxPool2d(2) halves height and width (rounding down) and keeps the channels."
_SHAPE_HINTS = {
    "conv1": "a 3×3 conv with padding=1 keeps height and width; channels = its out_channels.",
    "pool1": _POOL,
    "conv2": "conv2 keeps the pooled size (3×3, padding=1) and has out_channels channels.",
    "pool2": _POOL,
    "flatten": "flattening multiplies the last stage's channels × height × width.",
    "flatten_36": "redo the chain for a 36×36 input, then channels × height × width.",
}


def _measured() -> dict[str, Any]:
    """The shape after each stage of ``FashionCNN`` for one 28×28 (and 36×36: ``_36``) image."""
    shapes: dict[str, Any] = {}
    for size, suffix in ((28, ""), (36, "_36")):
        acts = stage_activations(FashionCNN(input_size=size), torch.zeros(1, 1, size, size))
        shapes |= {f"{stage}{suffix}": tuple(t.shape[1:]) for stage, t in acts.items()}
        shapes[f"flatten{suffix}"] = math.prod(shapes[f"pool2{suffix}"])
    return shapes


def check_conv_shapes(answer: Mapping[str, Any] | Sequence[Any]) -> None:
    """Exercise 1.1: ``(channels, height, width)`` after each of :data:`STAGES` for one 28×28
    image, then the flatten sizes at 28×28 and 36×36 (a dict, or a sequence in that order)."""
    ex = "1.1"
    if not isinstance(answer, Mapping):  # a sequence in the order of STAGES
        whole = isinstance(answer, Sequence) and len(answer) == len(STAGES)
        answer = dict(zip(STAGES, answer, strict=True)) if whole else {}
    missing = [s for s in STAGES if s not in answer]
    if missing:
        hint = f"give a dict with all of {STAGES}, or a tuple of six in that order."
        raise failure(ex, f"missing entries: {', '.join(missing)}", hint)
    measured, wrong = _measured(), []
    for stage in STAGES:
        value = answer[stage]
        shape = tuple(value) if isinstance(value, list | tuple) else value  # or torch.Size
        if value is None:
            raise failure(ex, f"{stage} is still None", "replace each None with your shape.")
        if not all(type(v) is int for v in (shape if isinstance(shape, tuple) else [shape])):
            hint = "write (channels, height, width) as a tuple of ints, the flatten sizes as ints."
            raise failure(ex, f"{stage} is {value!r}, not a shape", hint)
        if isinstance(shape, tuple) and len(shape) == 4:
            hint = "leave out the batch dimension: give (channels, height, width)."
            raise failure(ex, f"{stage} has four numbers {shape}", hint)
        wrong += [stage] if shape != measured[stage] else []
    if wrong:
        listed = ", ".join(f"{s} = {answer[s]!r}" for s in wrong)
        raise failure(ex, f"not what a forward pass gives: {listed}", _SHAPE_HINTS[wrong[0]])
    passed(
        ex,
        f"all {len(STAGES)} shapes match a forward pass through FashionCNN "
        f"(flatten: {measured['flatten']} at 28×28, {measured['flatten_36']} at 36×36)",
    )


def check_dynamic_flatten(model_cls: Callable[..., nn.Module], n_convs: int = 3) -> None:
    """Exercise 1.2: ``model_cls(input_size=s)`` has ``n_convs`` Conv2d layers, all used, maps
    ``[2, 1, s, s]`` to ``[2, 10]`` for s = 28 and 36, and passes gradients to every conv."""
    ex, name = "1.2", getattr(model_cls, "__name__", repr(model_cls))
    for size in (28, 36):
        model = build_model(ex, model_cls, input_size=size)
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        if len(convs) != n_convs:
            hint = f"use {n_convs} conv blocks (conv → ReLU → MaxPool2d(2))."
            raise failure(ex, f"{name} has {len(convs)} Conv2d layers, not {n_convs}", hint)
        x = torch.randn(2, 1, size, size, generator=torch.Generator().manual_seed(size))
        with capture_activations(model.eval(), convs) as acts, torch.no_grad():
            what = f"{name}'s forward on a [2, 1, {size}, {size}] batch"
            hint = "compute the flatten size from a dummy forward pass, not as 128 * 3 * 3."
            out = call(ex, what, model, x, hint=hint)
        if not isinstance(out, torch.Tensor) or out.shape != (2, 10):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            hint = "end with a Linear layer to 10 logits; keep the batch: torch.flatten(x, 1)."
            raise failure(ex, f"a [2, 1, {size}, {size}] batch gave {shape}, not (2, 10)", hint)
        used = sum(bool(acts[c]) for c in convs)
        if used != n_convs:
            hint = "pass the input through every conv block in forward."
            raise failure(ex, f"forward uses {used} of the {n_convs} Conv2d layers", hint)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model.train()
            model(torch.cat([x, x])).sum().backward()
        grads = [model.get_submodule(c).weight.grad for c in convs]
        if any(g is None or not g.any() for g in grads):
            hint = "don't detach or wrap the features in torch.no_grad() inside forward."
            raise failure(ex, "no gradient reaches some conv weights", hint)
    passed(
        ex,
        f"{name} has {n_convs} Conv2d layers, all used, and maps [2, 1, 28, 28] and "
        "[2, 1, 36, 36] batches to [2, 10] logits",
    )


def _recall(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Recall of classes 0…9 from scikit-learn's confusion matrix; ``nan`` for an absent class."""
    cm = confusion_matrix(y_true, y_pred, labels=range(10))
    return np.divide(cm.diagonal(), cm.sum(1), out=np.full(10, np.nan), where=cm.sum(1) > 0)


def check_per_class_accuracy(fn: Callable[[Any, Any], np.ndarray]) -> None:
    """Exercise 1.3: ``fn(y_true, y_pred)[c]`` is the recall of class ``c`` (``nan`` when ``c`` is
    not in ``y_true``), as scikit-learn's confusion matrix gives it, for NumPy and torch inputs."""
    ex, rng = "1.3", np.random.default_rng(0)
    y_true = rng.integers(0, 10, 300)
    y_pred = np.where(rng.random(300) < 0.3, rng.integers(0, 10, 300), y_true)
    cases = {
        "random predictions": (y_true, y_pred),
        "class 3 never predicted": (y_true, np.where(y_pred == 3, 5, y_pred)),
        "class 9 absent from y_true (→ nan)": (np.where(y_true == 9, 8, y_true), y_pred),
        "torch tensors from predict()": (torch.from_numpy(y_true), torch.from_numpy(y_pred)),
    }
    for case, (true, pred) in cases.items():
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")  # e.g. numpy's "Mean of empty slice"
            hint = "convert the inputs with np.asarray; give nan to a class with no examples."
            got = call(ex, f"per_class_accuracy on case '{case}'", fn, true, pred, hint=hint)
        if not isinstance(got, np.ndarray):
            hint = "return np.ndarray (np.asarray(...) or .numpy() converts)."
            raise failure(ex, f"returned {type(got).__name__}, not a NumPy array", hint)
        if got.shape != (10,):
            hint = "return one entry per class 0…9, even absent ones (np.bincount(minlength=10))."
            raise failure(ex, f"returned shape {got.shape} on case '{case}', expected (10,)", hint)
        true, pred, got = np.asarray(true), np.asarray(pred), got.astype(float)
        if np.allclose(got, _recall(true, pred), equal_nan=True):
            continue
        slips = [  # (what a typical slip returns, its hint)
            (_recall(true, pred), "a class with no examples has no accuracy: return nan for it."),
            (_recall(pred, true), "that is precision: divide by each class's count in y_true."),
            (np.full(10, (true == pred).mean()), "that is the overall accuracy for every class."),
        ]
        hint = next(
            (h for v, h in slips if np.allclose(np.nan_to_num(got), np.nan_to_num(v))),
            "entry c = (y_pred[y_true == c] == c).mean(), the recall of class c.",
        )
        raise failure(ex, f"wrong values on case '{case}': {np.round(got, 3)}", hint)
    passed(
        ex,
        f"per_class_accuracy matches scikit-learn's confusion-matrix recall on {len(cases)} "
        "cases (random, a class never predicted, an absent class → nan, torch tensors)",
    )
