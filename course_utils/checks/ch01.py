"""Checks of the chapter 1 exercises: conv shapes, flatten, per-class accuracy, the loops."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import confusion_matrix
from torch import nn

from ..data import FashionMNISTTensors, TensorLoader
from ..models import FashionCNN
from ..train import evaluate
from ._common import aliases, call, failure, passed, refuse

__all__ = [
    "STAGES",
    "N_STEPS",
    "check_conv_shapes",
    "check_dynamic_flatten",
    "check_loops",
    "check_per_class_accuracy",
]


STAGES: tuple[str, ...] = ("conv1", "pool1", "conv2", "pool2", "flatten", "flatten_36")

# --- 1.1 ---------------------------------------------------------------------------------------


def _measured_shapes() -> dict[str, tuple[int, ...] | int]:
    """The shape after each stage of the seed ``FashionCNN``, measured with forward hooks."""
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
    """Exercise 1.1: the shapes after each stage of the seed CNN, worked out by hand.

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


# --- 1.4 ---------------------------------------------------------------------------------------

_EVAL_BATCHES = (16, 16, 4)  # an uneven last batch: the mean of per-batch accuracies is wrong
_TRAIN_BATCHES = (8, 8, 4)  # three batches; N_STEPS = 5 needs a second pass over them
N_STEPS = 5
_LR = 1e-2


def _tiny_model() -> FashionCNN:
    """A small CNN whose outputs change in train mode (BatchNorm and dropout), built from seed 0
    without touching the global random state."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return FashionCNN(width=4, hidden=16, norm="batch", dropout=0.5, conv_dropout=0.3)


def _evaluation_fixture() -> tuple[nn.Module, TensorLoader, int]:
    """A small model and a loader with an uneven last batch.

    Labels are set from the model's eval-mode predictions so that batches 1 and 2 are half right
    and the short last batch is all right: 20/36 = 0.556 overall, but 0.667 as a mean of batches.

    Returns:
        ``(model, loader, number of correct predictions)``.
    """
    generator = torch.Generator().manual_seed(0)
    model = _tiny_model()
    n = sum(_EVAL_BATCHES)
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=generator)
    # Predict with the same batches as the check's loader, so the very same floats decide argmax.
    probe = TensorLoader(
        FashionMNISTTensors(images, torch.zeros(n, dtype=torch.long)), _EVAL_BATCHES[0]
    )
    model.eval()
    with torch.no_grad():
        preds = torch.cat([model(x).argmax(1) for x, _ in probe])
    model.train()
    correct = torch.zeros(n, dtype=torch.bool)
    correct[0:8] = correct[16:24] = correct[32:36] = True
    labels = torch.where(correct, preds, (preds + 1) % 10)
    loader = TensorLoader(FashionMNISTTensors(images, labels), _EVAL_BATCHES[0])
    return model, loader, int(correct.sum())


def _training_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Three fixed batches of 8, 8 and 4 random images with random labels."""
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(n, 1, 28, 28, generator=generator),
            torch.randint(0, 10, (n,), generator=generator),
        )
        for n in _TRAIN_BATCHES
    ]


def _reference_steps(
    model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], zero_grad: bool = True
) -> list[float]:
    """The loop the learner writes, run by the check (``zero_grad=False``: a typical slip)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=_LR)
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model.train()
        for step in range(N_STEPS):
            x, y = batches[step % len(batches)]
            if zero_grad:
                optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses


def _shortcuts() -> list[tuple[object, str]]:
    """The package's loops, which solve this task, wherever a notebook can reach them."""
    from .. import experiments, train

    names = ("fit", "evaluate", "predict", "time_training_steps", "eval_mode")
    return [(train, n) for n in names] + [(experiments, n) for n in ("fit", "evaluate")]


def _check_train_steps(ex: str, train_steps: Callable[..., Any]) -> str:
    batches = _training_batches()
    reference_model = _tiny_model()
    model = copy.deepcopy(reference_model).eval()  # the loop must switch to train mode itself
    expected = _reference_steps(reference_model, batches)
    without_zero_grad = _reference_steps(_tiny_model(), batches, zero_grad=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=_LR)
    calls: list[tuple[bool, bool, int]] = []  # (training, grad enabled, batch number)
    first_pixels = {float(x.flatten()[0]): i for i, (x, _) in enumerate(batches)}
    hook = model.register_forward_pre_hook(
        lambda m, args: calls.append(
            (
                m.training,
                torch.is_grad_enabled(),
                first_pixels.get(float(args[0].detach().flatten()[0]), -1),
            )
        )
    )
    shortcuts = _shortcuts()
    try:
        with (
            torch.random.fork_rng(),
            refuse(ex, shortcuts + aliases([train_steps], shortcuts), task="the training loop"),
        ):
            torch.manual_seed(0)  # the same dropout masks as the reference run
            losses = call(
                ex,
                f"train_steps(model, batches, optimizer, loss_fn, n_steps={N_STEPS})",
                train_steps,
                model,
                batches,
                optimizer,
                nn.CrossEntropyLoss(),
                N_STEPS,
                hint="read the error above; each batch is a pair (images, labels).",
            )
    finally:
        hook.remove()
    case = f"{N_STEPS} steps over {len(batches)} batches of {'+'.join(map(str, _TRAIN_BATCHES))}"
    if not calls:
        raise failure(ex, f"train_steps never called the model ({case})", "run model(x) per step.")
    if not all(training for training, _, _ in calls):
        raise failure(
            ex,
            "train_steps ran the model in eval mode (it was handed over in eval mode)",
            "call model.train() at the start: dropout and BatchNorm behave differently when "
            "training, and the model may come from an evaluation.",
        )
    if not all(grad for _, grad, _ in calls):
        raise failure(
            ex, "a training forward pass ran without gradients", "no torch.no_grad() in training."
        )
    order = [i for *_, i in calls]
    wanted = [step % len(batches) for step in range(N_STEPS)]
    if order != wanted:
        hint = (
            "run exactly n_steps optimizer steps: when the batches run out, start again from "
            "the first (e.g. itertools.cycle, or an outer loop with a step counter)."
            if len(order) != N_STEPS
            else "take the batches in their order, one per step, cycling from the first."
        )
        raise failure(
            ex,
            f"the model saw batches {order} ({case}), expected {wanted}",
            hint,
        )
    if not isinstance(losses, list) or not all(type(v) is float for v in losses):
        raise failure(
            ex,
            f"train_steps returned {type(losses).__name__} {losses!r:.80}, not a list of floats",
            "append loss.item() (a Python float, which holds no graph) once per step.",
        )
    if len(losses) != N_STEPS:
        raise failure(ex, f"returned {len(losses)} losses for {N_STEPS} steps", "one per step.")
    if not np.allclose(losses, expected, rtol=0, atol=1e-5):
        got = ", ".join(f"{v:.4f}" for v in losses)
        want = ", ".join(f"{v:.4f}" for v in expected)
        hint = (
            "call optimizer.zero_grad() before each backward(): without it the gradients of "
            "all earlier steps add up."
            if np.allclose(losses, without_zero_grad, rtol=0, atol=1e-5)
            else "per step: zero_grad() → logits = model(x) → loss = loss_fn(logits, y) → "
            "loss.backward() → optimizer.step(), and record that step's loss."
        )
        raise failure(ex, f"losses [{got}] differ from the reference run's [{want}] ({case})", hint)
    if not model.training:
        raise failure(
            ex, "the model was left in eval mode after training", "leave it in train mode."
        )
    return case


def _check_evaluate(ex: str, evaluate_model: Callable[..., Any]) -> None:
    model, loader, n_correct = _evaluation_fixture()
    n = sum(_EVAL_BATCHES)
    expected_loss, expected_acc = evaluate(model, loader)  # before the package is switched off
    batch_results = [evaluate(model, [batch]) for batch in loader]
    calls: list[tuple[bool, bool, int]] = []  # (training, grad enabled, batch size) per forward
    hook = model.register_forward_pre_hook(
        lambda m, args: calls.append((m.training, torch.is_grad_enabled(), len(args[0])))
    )
    shortcuts = _shortcuts()
    results = {}
    try:
        for mode in (True, False):
            model.train(mode)
            calls.clear()
            with refuse(
                ex, shortcuts + aliases([evaluate_model], shortcuts), task="the evaluation loop"
            ):
                results[mode] = call(
                    ex,
                    "evaluate_model(model, loader, loss_fn)",
                    evaluate_model,
                    model,
                    loader,
                    nn.CrossEntropyLoss(),
                    hint="read the error above. The predicted class is logits.argmax(1).",
                )
            before = "train" if mode else "eval"
            if not calls:
                raise failure(ex, "evaluate_model never called the model", "run model(x).")
            if any(training for training, _, _ in calls):
                raise failure(
                    ex,
                    f"evaluate_model ran the model in training mode (handed over in {before} mode)",
                    "call model.eval() before the loop: in training mode dropout zeroes random "
                    "units and BatchNorm uses the batch's statistics.",
                )
            if any(grad for _, grad, _ in calls):
                raise failure(
                    ex,
                    "evaluate_model's forward passes built a gradient graph",
                    "wrap the loop in `with torch.no_grad():` (or torch.inference_mode()).",
                )
            if model.training != mode:
                raise failure(
                    ex,
                    f"the model came in {before} mode and left in "
                    f"{'train' if model.training else 'eval'} mode",
                    "remember was_training = model.training, and call model.train(was_training) "
                    "at the end, in a `finally:` so that an error does not skip it.",
                )
    finally:
        hook.remove()
    if any(p.grad is not None for p in model.parameters()):
        raise failure(ex, "parameters have .grad set after evaluation", "no backward() here.")
    if sum(size for *_, size in calls) != n:
        raise failure(
            ex,
            f"the model saw {sum(s for *_, s in calls)} images, not the loader's {n}",
            "loop once over every batch of loader, including the last, shorter one.",
        )
    result = results[False]
    if (
        not isinstance(result, tuple | list)
        or len(result) != 2
        or not all(type(v) is float for v in result)
    ):
        raise failure(
            ex,
            f"evaluate_model returned {result!r:.80}, not (loss, accuracy) as two floats",
            "return (total_loss / seen, correct / seen), with .item() on one-element tensors.",
        )
    loss, acc = result
    case = f"batches of {'+'.join(map(str, _EVAL_BATCHES))}, {n_correct}/{n} right"
    if not math.isclose(acc, expected_acc, abs_tol=1e-9):
        wrong = {
            float(np.mean([a for _, a in batch_results])): "you averaged the per-batch "
            "accuracies, but the last batch is shorter: add up the correct predictions and "
            "divide once by the number of samples.",
            100 * expected_acc: "return a fraction between 0 and 1, not a percentage.",
            n_correct / (len(loader) * loader.batch_size): "divide by the number of samples "
            "(len(y) summed over batches), not len(loader) * batch_size.",
        }
        hint = next(
            (h for value, h in wrong.items() if math.isclose(acc, value, abs_tol=1e-6)),
            "count (logits.argmax(1) == y).sum() over all batches, divide by the sample count.",
        )
        raise failure(ex, f"accuracy {acc:.4f}, expected {expected_acc:.4f} ({case})", hint)
    if not math.isclose(loss, expected_loss, rel_tol=1e-5):
        batch_mean = float(np.mean([v for v, _ in batch_results]))
        hint = (
            "the mean of the per-batch losses weighs the short last batch too much: add "
            "loss.item() * len(y) per batch and divide by the number of samples."
            if math.isclose(loss, batch_mean, rel_tol=1e-5)
            else "loss_fn returns the batch's mean loss: add loss.item() * len(y) per batch, "
            "then divide once by the number of samples."
        )
        raise failure(ex, f"loss {loss:.4f}, expected {expected_loss:.4f} ({case})", hint)


def check_loops(train_steps: Callable[..., Any], evaluate_model: Callable[..., Any]) -> None:
    """Exercise 1.4: the training loop and the evaluation loop, written by the learner.

    ``train_steps(model, batches, optimizer, loss_fn, n_steps) -> list[float]`` must run exactly
    ``n_steps`` optimizer steps in train mode, cycling over ``batches``, and return each step's
    loss; on a tiny CNN with dropout and BatchNorm (handed over in eval mode) its losses must
    equal a reference run's with the same seed and batches. ``evaluate_model(model, batches,
    loss_fn) -> (loss, accuracy)`` must run in eval mode without gradients, weigh every sample
    once (an uneven last batch), equal :func:`course_utils.train.evaluate`, and leave the model
    in the mode it found it in. ``course_utils.train``'s loops are switched off meanwhile.

    Raises:
        AssertionError: with the failing case and a hint.
    """
    ex = "1.4"
    case = _check_train_steps(ex, train_steps)
    _check_evaluate(ex, evaluate_model)
    passed(
        ex,
        f"train_steps matches a seeded reference run ({case}) and leaves the model in train "
        "mode; evaluate_model runs in eval mode without gradients, matches "
        "course_utils.train.evaluate on an uneven last batch, and restores the model's mode",
    )
