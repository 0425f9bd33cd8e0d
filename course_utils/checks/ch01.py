"""Checks of exercises 1.1–1.3: conv shapes, the dynamic flatten, per-class accuracy
(1.4, the loops: :mod:`course_utils.checks.ch01_loops`)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import confusion_matrix
from torch import nn

from ..models import FashionCNN
from ._common import call, failure, passed

__all__ = [
    "STAGES",
    "check_conv_shapes",
    "check_dynamic_flatten",
    "check_per_class_accuracy",
]


STAGES: tuple[str, ...] = ("conv1", "pool1", "conv2", "pool2", "flatten", "flatten_36")

# --- 1.1 ---------------------------------------------------------------------------------------


def _measured_shapes() -> dict[str, tuple[int, ...] | int]:
    """The shape after each stage of chapter 1's ``FashionCNN``, measured with forward hooks."""
    seen: dict[str, list[tuple[int, ...]]] = {"conv1": [], "pool": [], "conv2": []}
    model = FashionCNN().eval()
    hooks = [
        getattr(model, name).register_forward_hook(
            lambda _m, _i, out, name=name: seen[name].append(tuple(out.shape[1:]))
        )
        for name in seen
    ]
    try:
        with torch.no_grad():
            flat = model.features(torch.zeros(1, 1, 28, 28)).shape[1]
            flat_36 = FashionCNN(input_size=36).eval().features(torch.zeros(1, 1, 36, 36)).shape[1]
    finally:
        for hook in hooks:
            hook.remove()
    return {
        "conv1": seen["conv1"][0],
        "pool1": seen["pool"][0],
        "conv2": seen["conv2"][0],
        "pool2": seen["pool"][1],
        "flatten": flat,
        "flatten_36": flat_36,
    }


_SHAPE_HINTS = {
    "conv1": "a 3×3 convolution with padding=1 keeps height and width; the channel count becomes "
    "the layer's out_channels.",
    "pool1": "MaxPool2d(2) halves height and width (rounding down) and keeps the channels.",
    "conv2": "conv2 keeps the pooled height and width (3×3, padding=1) and has out_channels "
    "channels.",
    "pool2": "MaxPool2d(2) halves height and width (rounding down) and keeps the channels.",
    "flatten": "flattening multiplies the three numbers of the last stage: channels × height × "
    "width.",
    "flatten_36": "redo the chain for a 36×36 input: 36 → conv → pool → conv → pool, then "
    "channels × height × width.",
}


def _as_shape(value: Any) -> tuple[int, ...] | int | None:
    """An int, or a tuple of ints (from a tuple, list or ``torch.Size``); ``None`` if neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, Sequence) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return tuple(value)
    return None


def check_conv_shapes(answer: Mapping[str, Any] | Sequence[Any]) -> None:
    """Exercise 1.1: the shapes after each stage of the baseline CNN, worked out by hand.

    Args:
        answer: a dict with keys :data:`STAGES` (or a sequence in that order): ``(channels,
            height, width)`` after ``conv1``, ``pool1``, ``conv2`` and ``pool2`` for one 28×28
            image (no batch dimension), the ``flatten`` size, and the flatten size for a 36×36
            image (``flatten_36``).

    Raises:
        AssertionError: an entry is missing or differs from a forward pass through ``FashionCNN``.
    """
    ex = "1.1"
    if not isinstance(answer, Mapping):
        if not isinstance(answer, Sequence) or len(answer) != len(STAGES):
            raise failure(
                ex,
                f"expected a dict with keys {', '.join(STAGES)}",
                "or a tuple of six entries in that order.",
            )
        answer = dict(zip(STAGES, answer, strict=True))
    missing = [s for s in STAGES if s not in answer]
    if missing:
        raise failure(ex, f"missing entries: {', '.join(missing)}", f"fill in all of {STAGES}.")
    measured = _measured_shapes()
    wrong = []
    for stage in STAGES:
        given = _as_shape(answer[stage])
        if answer[stage] is None:
            raise failure(
                ex, f"{stage} is still None", "replace each None with the shape you worked out."
            )
        if given is None:
            raise failure(
                ex,
                f"{stage} is {answer[stage]!r}, not a shape",
                "write (channels, height, width) as a tuple of ints, and the flatten sizes as "
                "ints.",
            )
        if stage.startswith(("conv", "pool")) and isinstance(given, tuple) and len(given) == 4:
            raise failure(
                ex,
                f"{stage} has four numbers {given}",
                "leave out the batch dimension: give (channels, height, width).",
            )
        if given != measured[stage]:
            wrong.append(stage)
    if wrong:
        listed = ", ".join(f"{s} = {answer[s]!r}" for s in wrong)
        raise failure(ex, f"not what a forward pass gives: {listed}", _SHAPE_HINTS[wrong[0]])
    passed(
        ex,
        f"all {len(STAGES)} shapes match a forward pass through FashionCNN "
        f"(flatten: {measured['flatten']} at 28×28, {measured['flatten_36']} at 36×36)",
    )


# --- 1.2 ---------------------------------------------------------------------------------------


def check_dynamic_flatten(model_cls: Callable[..., nn.Module], n_convs: int = 3) -> None:
    """Exercise 1.2: a CNN with ``n_convs`` conv blocks whose flatten size is computed, not typed.

    ``model_cls(input_size=s)`` is built for 28×28 and 36×36 inputs. Each must be an
    ``nn.Module`` with exactly ``n_convs`` ``Conv2d`` layers, all used by ``forward``, map a batch
    ``[2, 1, s, s]`` to logits ``[2, 10]``, and pass gradients back to every conv.

    Raises:
        AssertionError: with a hint (a hard-coded flatten size shows up at 36×36).
    """
    ex = "1.2"
    name = getattr(model_cls, "__name__", repr(model_cls))
    for size in (28, 36):
        try:
            with torch.random.fork_rng():  # leave the notebook's random state alone
                torch.manual_seed(0)
                model = model_cls(input_size=size)
        except NotImplementedError:
            raise
        except Exception as err:
            hint = (
                "give __init__ an `input_size: int = 28` argument."
                if "input_size" in str(err)
                else "build the layers, then measure the flatten size with one dummy forward pass "
                "of torch.zeros(1, 1, input_size, input_size) through the conv blocks."
            )
            raise failure(
                ex, f"{name}(input_size={size}) raised {type(err).__name__}: {err}", hint
            ) from err
        if not isinstance(model, nn.Module):
            raise failure(ex, f"{name} is not an nn.Module", "subclass nn.Module.")
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        if len(convs) != n_convs:
            raise failure(
                ex,
                f"{name} has {len(convs)} Conv2d layers, not {n_convs}",
                f"use {n_convs} conv blocks (conv → ReLU → MaxPool2d(2)).",
            )
        used: set[int] = set()
        hooks = [
            c.register_forward_hook(lambda m, _i, _o, used=used: used.add(id(m))) for c in convs
        ]
        x = torch.randn(2, 1, size, size, generator=torch.Generator().manual_seed(size))
        try:
            model.eval()
            with torch.no_grad():
                out = call(
                    ex,
                    f"{name}'s forward on a [2, 1, {size}, {size}] batch",
                    model,
                    x,
                    hint="the flatten size must follow the input size: compute it in __init__ "
                    "from a dummy forward pass instead of typing a number like 128 * 3 * 3.",
                )
        finally:
            for hook in hooks:
                hook.remove()
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, 10):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise failure(
                ex,
                f"a [2, 1, {size}, {size}] batch gave {shape}, not (2, 10)",
                "end with a Linear layer to 10 logits; flatten with torch.flatten(x, 1) so the "
                "batch dimension is kept.",
            )
        if len(used) != n_convs:
            raise failure(
                ex,
                f"forward uses {len(used)} of the {n_convs} Conv2d layers",
                "pass the input through every conv block in forward.",
            )
        model.train()
        model.zero_grad(set_to_none=True)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model(torch.cat([x, x])).sum().backward()
        if any(c.weight.grad is None or not c.weight.grad.abs().sum() for c in convs):
            raise failure(
                ex,
                "no gradient reaches some conv weights",
                "don't detach or wrap the features in torch.no_grad() inside forward.",
            )
    passed(
        ex,
        f"{name} has {n_convs} Conv2d layers, all used, and maps [2, 1, 28, 28] and "
        "[2, 1, 36, 36] batches to [2, 10] logits",
    )


# --- 1.3 ---------------------------------------------------------------------------------------


def _reference_per_class(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Recall per class from scikit-learn's confusion matrix; ``nan`` where a class is absent."""
    cm = confusion_matrix(y_true, y_pred, labels=range(num_classes))
    support = cm.sum(axis=1)
    return np.divide(cm.diagonal(), support, out=np.full(num_classes, np.nan), where=support > 0)


def _per_class_cases() -> list[tuple[str, Any, Any]]:
    """``(name, y_true, y_pred)`` cases for 10 classes."""
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 10, 300)
    y_pred = np.where(rng.random(300) < 0.3, rng.integers(0, 10, 300), y_true)
    never_predicted = np.where(y_pred == 3, 5, y_pred)
    absent_true = np.where(y_true == 9, 8, y_true)  # class 9 (the last) never occurs in y_true
    return [
        ("random predictions", y_true, y_pred),
        ("class 3 never predicted", y_true, never_predicted),
        ("class 9 absent from y_true (→ nan)", absent_true, y_pred),
        ("torch tensors from predict()", torch.from_numpy(y_true), torch.from_numpy(y_pred)),
    ]


def check_per_class_accuracy(fn: Callable[[Any, Any], np.ndarray], num_classes: int = 10) -> None:
    """Exercise 1.3: ``per_class_accuracy(y_true, y_pred) -> np.ndarray`` of shape ``[10]``.

    Entry ``c`` must be the fraction of the examples *of true class c* that were predicted as
    ``c`` (the recall of ``c``), and ``nan`` when class ``c`` does not occur in ``y_true``.
    Compared with scikit-learn's confusion matrix on random predictions, a class that is never
    predicted, a class absent from ``y_true``, and torch tensors as input.

    Raises:
        AssertionError: with a hint naming the likely mistake.
    """
    ex = "1.3"
    cases = _per_class_cases()
    for case, y_true, y_pred in cases:
        true_np, pred_np = np.asarray(y_true), np.asarray(y_pred)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. numpy's "Mean of empty slice"
            with np.errstate(all="ignore"):
                result = call(
                    ex,
                    f"per_class_accuracy on case '{case}'",
                    fn,
                    y_true,
                    y_pred,
                    hint="convert the inputs with np.asarray, and give nan (not an error) to a "
                    "class with no examples.",
                )
        if not isinstance(result, np.ndarray):
            raise failure(
                ex,
                f"returned {type(result).__name__}, not a NumPy array",
                "return np.ndarray (np.asarray(...) or .numpy() converts).",
            )
        if result.shape != (num_classes,):
            raise failure(
                ex,
                f"returned shape {result.shape} on case '{case}', expected ({num_classes},)",
                "return one entry per class 0…9, even for classes that are absent or never "
                "predicted (np.bincount(..., minlength=10)).",
            )
        expected = _reference_per_class(true_np, pred_np, num_classes)
        result = result.astype(float)
        if np.allclose(result, expected, equal_nan=True):
            continue
        absent = np.isnan(expected)
        if np.allclose(result[~absent], expected[~absent]):
            hint = "a class with no examples in y_true has no accuracy: return nan for it."
        elif np.allclose(
            result, np.nan_to_num(_reference_per_class(pred_np, true_np, num_classes)), atol=1e-9
        ) or np.allclose(
            result, _reference_per_class(pred_np, true_np, num_classes), equal_nan=True
        ):
            hint = (
                "you divided by how often each class was *predicted* (that is precision); "
                "divide by how often it is the *true* class."
            )
        elif np.allclose(result, (true_np == pred_np).mean()):
            hint = "that is the overall accuracy for every class; compute it per true class."
        else:
            hint = "entry c = (y_pred[y_true == c] == c).mean(), i.e. recall of class c."
        shown = np.array2string(result, precision=3)
        raise failure(ex, f"wrong values on case '{case}': {shown}", hint)
    passed(
        ex,
        f"per_class_accuracy matches scikit-learn's confusion-matrix recall on {len(cases)} "
        "cases (random, a class never predicted, an absent class → nan, torch tensors)",
    )
