"""The ``check_*`` helpers that the exercise notebooks call after each task.

Each check really verifies the learner's object against a reference measured at run time (a
forward pass through the real layers, :func:`course_utils.train.evaluate`, scikit-learn). On
success it prints one line ``✅ Exercise N.k: <what was verified>``; on failure it prints
``❌ Exercise N.k: <what is wrong>`` and raises :class:`AssertionError` with a hint.
A ``NotImplementedError`` from an unfinished blank is passed through unchanged.

Every check is deterministic and takes well under two seconds on a laptop CPU.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import confusion_matrix
from torch import nn

from .data import FashionMNISTTensors, TensorLoader
from .hooks import hook_count
from .models import FashionCNN
from .train import evaluate

__all__ = [
    "STAGES",
    "check_conv_shapes",
    "check_dynamic_flatten",
    "check_evaluate_fn",
    "check_per_class_accuracy",
]

STAGES: tuple[str, ...] = ("conv1", "pool1", "conv2", "pool2", "flatten", "flatten_36")


def _passed(exercise: str, what: str) -> None:
    print(f"✅ Exercise {exercise}: {what}")


def _failure(exercise: str, problem: str, hint: str) -> AssertionError:
    """Print the ❌ line and return the error to raise (``raise _failure(...)``)."""
    print(f"❌ Exercise {exercise}: {problem}")
    return AssertionError(f"Exercise {exercise}: {problem}\nHint: {hint}")


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
            raise _failure(
                ex,
                f"expected a dict with keys {', '.join(STAGES)}",
                "or a tuple of six entries in that order.",
            )
        answer = dict(zip(STAGES, answer, strict=True))
    missing = [s for s in STAGES if s not in answer]
    if missing:
        raise _failure(ex, f"missing entries: {', '.join(missing)}", f"fill in all of {STAGES}.")
    measured = _measured_shapes()
    wrong = []
    for stage in STAGES:
        given = _as_shape(answer[stage])
        if answer[stage] is None:
            raise _failure(
                ex, f"{stage} is still None", "replace each None with the shape you worked out."
            )
        if given is None:
            raise _failure(
                ex,
                f"{stage} is {answer[stage]!r}, not a shape",
                "write (channels, height, width) as a tuple of ints, and the flatten sizes as "
                "ints.",
            )
        if stage.startswith(("conv", "pool")) and isinstance(given, tuple) and len(given) == 4:
            raise _failure(
                ex,
                f"{stage} has four numbers {given}",
                "leave out the batch dimension: give (channels, height, width).",
            )
        if given != measured[stage]:
            wrong.append(stage)
    if wrong:
        listed = ", ".join(f"{s} = {answer[s]!r}" for s in wrong)
        raise _failure(ex, f"not what a forward pass gives: {listed}", _SHAPE_HINTS[wrong[0]])
    _passed(
        ex,
        f"all {len(STAGES)} shapes match a forward pass through FashionCNN "
        f"(flatten: {measured['flatten']} at 28×28, {measured['flatten_36']} at 36×36)",
    )


# --- 1.2 ---------------------------------------------------------------------------------------

_EVAL_BATCHES = (16, 16, 4)  # an uneven last batch: the mean of per-batch accuracies is wrong


def _evaluation_fixture() -> tuple[nn.Module, TensorLoader, int]:
    """A small model whose outputs change in train mode, and a loader with an uneven last batch.

    Labels are set from the model's eval-mode predictions so that batches 1 and 2 are half right
    and the short last batch is all right: 20/36 = 0.556 overall, but 0.667 as a mean of batches.

    Returns:
        ``(model, loader, number of correct predictions)``.
    """
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = FashionCNN(width=4, hidden=16, norm="batch", dropout=0.5, conv_dropout=0.3)
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


def check_evaluate_fn(fn: Callable[[nn.Module, Any], float]) -> None:
    """Exercise 1.2: ``evaluate_accuracy(model, loader) -> float``.

    The function is run on a small CNN with BatchNorm and dropout (so that train mode changes its
    outputs) over batches of 16, 16 and 4 images. It must put the model in eval mode, run without
    gradients, leave every ``.grad`` as ``None``, and return a Python float equal to
    :func:`course_utils.train.evaluate`'s accuracy: correct predictions over *all* samples.

    Raises:
        AssertionError: with a hint naming the likely mistake.
    """
    ex = "1.2"
    model, loader, n_correct = _evaluation_fixture()
    n = sum(_EVAL_BATCHES)
    _, expected = evaluate(model, loader)
    calls: list[tuple[bool, bool, int]] = []  # (training, grad enabled, batch size) per forward
    hook = model.register_forward_pre_hook(
        lambda m, args: calls.append((m.training, torch.is_grad_enabled(), len(args[0])))
    )
    try:
        result = fn(model, loader)
    except NotImplementedError:
        raise
    except Exception as err:
        raise _failure(
            ex,
            f"evaluate_accuracy raised {type(err).__name__}: {err}",
            "read the error above. If shapes disagree: the predicted class is logits.argmax(1) "
            "(dim 1 holds the 10 class scores, dim 0 is the batch); compare it with the same "
            "batch's labels y.",
        ) from err
    finally:
        hook.remove()
    if not calls:
        raise _failure(ex, "the model was never called", "run model(x) on every batch of loader.")
    if any(training for training, _, _ in calls):
        raise _failure(
            ex,
            "the model ran in training mode",
            "call model.eval() before the loop: in training mode dropout zeroes random units and "
            "BatchNorm uses the batch's statistics, so the accuracy is noisy and wrong.",
        )
    if any(grad for _, grad, _ in calls):
        raise _failure(
            ex,
            "the forward passes built a gradient graph",
            "wrap the loop in `with torch.no_grad():` (or torch.inference_mode()): evaluation "
            "needs no gradients, and recording them costs memory and time.",
        )
    if any(p.grad is not None for p in model.parameters()):
        raise _failure(
            ex,
            "parameters have .grad set after evaluation",
            "evaluation must not call backward(): it only counts correct predictions.",
        )
    if sum(size for *_, size in calls) != n:
        raise _failure(
            ex,
            f"the model saw {sum(s for *_, s in calls)} images, not the loader's {n}",
            "loop once over every batch of loader, including the last, shorter one.",
        )
    if not isinstance(result, float):
        raise _failure(
            ex,
            f"returned {type(result).__name__} {result!r}, not a float",
            "return a Python float, e.g. correct / total (use .item() on a one-element tensor).",
        )
    if math.isclose(result, expected, abs_tol=1e-9):
        _passed(
            ex,
            f"evaluate_accuracy runs in eval mode under no_grad and returns {result:.4f} "
            f"({n_correct}/{n}), matching course_utils.train.evaluate on batches of "
            + "+".join(map(str, _EVAL_BATCHES)),
        )
        return
    batch_means = [evaluate(model, [batch])[1] for batch in loader]
    wrong = {
        float(np.mean(batch_means)): "you averaged the per-batch accuracies, but the last batch "
        "has only 4 images: add up the correct predictions and divide once by the total number "
        "of samples.",
        100 * expected: "return a fraction between 0 and 1, not a percentage.",
        n_correct / (len(loader) * loader.batch_size): "divide by the number of samples "
        "(len(y) summed over batches), not len(loader) * batch_size: the last batch is shorter.",
    }
    hint = next(
        (h for value, h in wrong.items() if math.isclose(result, value, abs_tol=1e-6)),
        "count (logits.argmax(1) == y).sum() over all batches and divide by the number of samples.",
    )
    raise _failure(ex, f"returned {result:.4f}, expected {expected:.4f} ({n_correct}/{n})", hint)


# --- 1.3 ---------------------------------------------------------------------------------------


def check_dynamic_flatten(model_cls: Callable[..., nn.Module], n_convs: int = 3) -> None:
    """Exercise 1.3: a CNN with ``n_convs`` conv blocks whose flatten size is computed, not typed.

    ``model_cls(input_size=s)`` is built for 28×28 and 36×36 inputs. Each must be an
    ``nn.Module`` with exactly ``n_convs`` ``Conv2d`` layers, all used by ``forward``, map a batch
    ``[2, 1, s, s]`` to logits ``[2, 10]``, and pass gradients back to every conv.

    Raises:
        AssertionError: with a hint (a hard-coded flatten size shows up at 36×36).
    """
    ex = "1.3"
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
            raise _failure(
                ex, f"{name}(input_size={size}) raised {type(err).__name__}: {err}", hint
            ) from err
        if not isinstance(model, nn.Module):
            raise _failure(ex, f"{name} is not an nn.Module", "subclass nn.Module.")
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        if len(convs) != n_convs:
            raise _failure(
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
                out = model(x)
        except NotImplementedError:
            raise
        except Exception as err:
            raise _failure(
                ex,
                f"forward on a [2, 1, {size}, {size}] batch raised {type(err).__name__}: {err}",
                "the flatten size must follow the input size: compute it in __init__ from a dummy "
                "forward pass instead of typing a number like 128 * 3 * 3.",
            ) from err
        finally:
            for hook in hooks:
                hook.remove()
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, 10):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise _failure(
                ex,
                f"a [2, 1, {size}, {size}] batch gave {shape}, not (2, 10)",
                "end with a Linear layer to 10 logits; flatten with torch.flatten(x, 1) so the "
                "batch dimension is kept.",
            )
        if len(used) != n_convs:
            raise _failure(
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
            raise _failure(
                ex,
                "no gradient reaches some conv weights",
                "don't detach or wrap the features in torch.no_grad() inside forward.",
            )
    _passed(
        ex,
        f"{name} has {n_convs} Conv2d layers, all used, and maps [2, 1, 28, 28] and "
        "[2, 1, 36, 36] batches to [2, 10] logits",
    )


# --- 1.4 ---------------------------------------------------------------------------------------


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
    """Exercise 1.4: ``per_class_accuracy(y_true, y_pred) -> np.ndarray`` of shape ``[10]``.

    Entry ``c`` must be the fraction of the examples *of true class c* that were predicted as
    ``c`` (the recall of ``c``), and ``nan`` when class ``c`` does not occur in ``y_true``.
    Compared with scikit-learn's confusion matrix on random predictions, a class that is never
    predicted, a class absent from ``y_true``, and torch tensors as input.

    Raises:
        AssertionError: with a hint naming the likely mistake.
    """
    ex = "1.4"
    cases = _per_class_cases()
    for case, y_true, y_pred in cases:
        true_np, pred_np = np.asarray(y_true), np.asarray(y_pred)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. numpy's "Mean of empty slice"
                with np.errstate(all="ignore"):
                    result = fn(y_true, y_pred)
        except NotImplementedError:
            raise
        except Exception as err:
            raise _failure(
                ex,
                f"per_class_accuracy raised {type(err).__name__} on case '{case}': {err}",
                "convert the inputs with np.asarray, and give nan (not an error) to a class with "
                "no examples.",
            ) from err
        if not isinstance(result, np.ndarray):
            raise _failure(
                ex,
                f"returned {type(result).__name__}, not a NumPy array",
                "return np.ndarray (np.asarray(...) or .numpy() converts).",
            )
        if result.shape != (num_classes,):
            raise _failure(
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
        raise _failure(ex, f"wrong values on case '{case}': {shown}", hint)
    _passed(
        ex,
        f"per_class_accuracy matches scikit-learn's confusion-matrix recall on {len(cases)} "
        "cases (random, a class never predicted, an absent class → nan, torch tensors)",
    )


# --- Chapter 5–7 checks ---

__all__ += [
    "check_filter_display",
    "check_freeze_bn_block",
    "check_freeze_conv1",
    "check_hook_capture",
    "check_png_dataset",
]


def _small_model(seed: int = 0, **kwargs: Any) -> FashionCNN:
    torch.manual_seed(seed)
    return FashionCNN(**kwargs)


# --- 5.1 ---------------------------------------------------------------------------------------


def check_filter_display(fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Exercise 5.1: ``fn(conv1.weight)`` scales each filter to [0, 1] on its own (min-max).

    Verified on a real ``[32, 1, 3, 3]`` conv1 weight and on a weight whose filters differ in
    scale by 100×, against a reference computed here.
    """
    ex = "5.1"
    weight = _small_model().conv1.weight.detach().clone()
    scaled = weight * torch.logspace(-1, 1, len(weight))[:, None, None, None]
    for case, w in (("conv1 weight", weight), ("filters of very different scales", scaled)):
        original = w.clone()
        try:
            out = fn(w)
        except NotImplementedError:
            raise
        except Exception as err:
            raise _failure(
                ex, f"raised {type(err).__name__} on the {case}: {err}", "work on a detached copy."
            ) from err
        if not torch.equal(w, original):
            raise _failure(ex, "changed the weight in place", "compute on w.detach().clone().")
        if not isinstance(out, torch.Tensor):
            raise _failure(ex, f"returned {type(out).__name__}", "return a torch.Tensor.")
        if tuple(out.shape) != (32, 3, 3):
            raise _failure(
                ex,
                f"shape {tuple(out.shape)}, expected (32, 3, 3)",
                "drop the input-channel dimension (weight[:, 0]) so each filter is a 3×3 image.",
            )
        flat = out.detach().float().flatten(1)
        ref = w[:, 0].flatten(1)
        ref = (ref - ref.min(1, keepdim=True).values) / (
            ref.max(1, keepdim=True).values - ref.min(1, keepdim=True).values
        )
        if torch.allclose(flat, ref.view_as(flat), atol=1e-5):
            continue
        if flat.min() < -1e-6 or flat.max() > 1 + 1e-6:
            hint = "every value must lie in [0, 1]: subtract the minimum, divide by max − min."
        elif torch.allclose(
            flat, ((w - w.min()) / (w.max() - w.min()))[:, 0].flatten(1), atol=1e-5
        ):
            hint = (
                "you scaled all filters together (one min and max for the whole tensor); scale "
                "each filter by its own min and max (reduce over dim 1 of weight.flatten(1))."
            )
        else:
            hint = "filter i should be (w_i − min(w_i)) / (max(w_i) − min(w_i))."
        raise _failure(ex, f"wrong values on the {case}", hint)
    _passed(ex, "each of the 32 filters is min-max scaled to [0, 1] on its own (2 weights)")


# --- 5.2 ---------------------------------------------------------------------------------------


def check_hook_capture(fn: Callable[[nn.Module, str, torch.Tensor], torch.Tensor]) -> None:
    """Exercise 5.2: ``fn(model, name, x)`` returns submodule ``name``'s output for ``x`` via a
    forward hook, and removes the hook, also when the forward pass raises."""
    ex = "5.2"
    model = _small_model().eval()
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = {
            "conv1": model.conv1(x),
            "conv2": model.conv2(model.pool(model.act1(model.conv1(x)))),
        }
    expected["act2"] = model.act2(expected["conv2"])
    for name, ref in expected.items():
        try:
            out = fn(model, name, x)
        except NotImplementedError:
            raise
        except Exception as err:
            raise _failure(
                ex, f"raised {type(err).__name__} for {name!r}: {err}", "use getattr/named_modules."
            ) from err
        module = dict(model.named_modules())[name]
        if module._forward_hooks:
            raise _failure(
                ex,
                f"left {len(module._forward_hooks)} hook(s) on {name}",
                "keep the handle from register_forward_hook and call handle.remove() in a "
                "finally: block.",
            )
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(ref.shape):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise _failure(
                ex,
                f"for {name!r} got {shape}, expected shape {tuple(ref.shape)}",
                "return the hook's `output` (third argument, not its input) for the whole batch.",
            )
        if out.requires_grad:
            raise _failure(ex, "the activation still requires grad", "store output.detach().")
        if not torch.allclose(out, ref, atol=1e-5):
            raise _failure(
                ex,
                f"values for {name!r} differ from the layer's output",
                "store the hook's output (the third argument), not its input.",
            )
    with _CatchValueError() as caught:
        fn(model, "conv1", torch.zeros(1, 1, 20, 20))  # FashionCNN refuses 20×20 inputs
    if model.conv1._forward_hooks:
        raise _failure(
            ex,
            "after a forward pass that raised, the hook was left on conv1",
            "remove the hook in a try/finally (or a context manager) so errors cannot skip it.",
        )
    if not caught:
        raise _failure(
            ex,
            "the error of a failing forward pass was swallowed",
            "let the exception propagate; only make sure the hook is removed.",
        )
    _passed(ex, "conv1, conv2 and act2 outputs match the layers; hooks removed, even on error")


class _CatchValueError:
    """Swallow a ``ValueError`` raised in the block and remember it (truthy when caught)."""

    def __init__(self) -> None:
        self.caught = False

    def __enter__(self) -> _CatchValueError:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        self.caught = kind is not None and issubclass(kind, ValueError)
        return self.caught

    def __bool__(self) -> bool:
        return self.caught


# --- 6.1 ---------------------------------------------------------------------------------------


def _one_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)
    model.train()
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()


def check_freeze_conv1(fn: Callable[[nn.Module], torch.optim.Optimizer]) -> None:
    """Exercise 6.1: ``fn(model)`` freezes exactly ``conv1`` and returns an optimiser that holds
    only the trainable parameters; after one step conv1 is bit-identical, the rest changed."""
    ex = "6.1"
    model = _small_model()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    try:
        optimizer = fn(model)
    except NotImplementedError:
        raise
    except Exception as err:
        raise _failure(ex, f"raised {type(err).__name__}: {err}", "see the task text.") from err
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise _failure(ex, f"returned {type(optimizer).__name__}", "return the optimiser.")
    grad_flags = {k: p.requires_grad for k, p in model.named_parameters()}
    wrong = [k for k, flag in grad_flags.items() if flag == k.startswith("conv1.")]
    if wrong:
        raise _failure(
            ex,
            f"requires_grad is wrong for {wrong}",
            "call model.conv1.requires_grad_(False) and leave every other layer trainable.",
        )
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    named = list(model.named_parameters())
    frozen_held = [k for k, p in named if k.startswith("conv1.") and id(p) in held]
    missing = [k for k, p in model.named_parameters() if p.requires_grad and id(p) not in held]
    if frozen_held:
        raise _failure(
            ex,
            f"the optimiser holds frozen parameters {frozen_held}",
            "give it only the trainable ones: [p for p in model.parameters() if p.requires_grad]. "
            "(With weight decay or momentum, an optimiser can move a parameter without a grad.)",
        )
    if missing:
        raise _failure(ex, f"the optimiser misses {missing}", "pass every trainable parameter.")
    _one_step(model, optimizer)
    after = dict(model.named_parameters())
    moved = [k for k in before if k.startswith("conv1.") and not torch.equal(before[k], after[k])]
    stuck = [k for k in before if not k.startswith("conv1.") and torch.equal(before[k], after[k])]
    if moved:
        raise _failure(ex, f"{moved} changed during a step", "conv1 must be frozen.")
    if stuck:
        raise _failure(
            ex, f"{stuck} did not change during a step", "use a learning rate > 0 (e.g. Adam 1e-3)."
        )
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    _passed(
        ex,
        f"conv1 frozen and bit-identical after a step, the other {n_train:,} parameters trained, "
        "the optimiser holds only trainable parameters",
    )


# --- 6.2 ---------------------------------------------------------------------------------------


def check_freeze_bn_block(fn: Callable[[nn.Module], None]) -> None:
    """Exercise 6.2: ``fn(model)`` freezes block 1 (``conv1`` and ``bn1``) of a BatchNorm model so
    that training changes neither its weights nor bn1's running statistics."""
    ex = "6.2"
    model = _small_model(norm="batch")
    with torch.no_grad():  # give bn1 non-trivial statistics, as a pretrained model would have
        model.bn1.running_mean.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
        model.bn1.running_var.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(3))
    block1 = ("conv1.", "bn1.")
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        fn(model)
    except NotImplementedError:
        raise
    except Exception as err:
        raise _failure(ex, f"raised {type(err).__name__}: {err}", "see the task text.") from err
    still = [k for k, p in model.named_parameters() if k.startswith(block1) and p.requires_grad]
    if still:
        raise _failure(ex, f"{still} still require grad", "requires_grad_(False) on conv1, bn1.")
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    model.train()  # what every training loop does at the start of an epoch
    for _ in range(2):
        _one_step(model, optimizer)
    after = model.state_dict()
    drift = [
        k
        for k in before
        if k.startswith(block1) and "num_batches" not in k
        if not torch.equal(before[k], after[k])
    ]
    if drift:
        raise _failure(
            ex,
            f"block 1 changed during training: {drift}",
            "frozen weights are not enough: a BatchNorm in train mode still updates its running "
            "mean and variance. Keep bn1 in eval mode even after model.train(), e.g. with "
            "a forward pre-hook on bn1 that sets m.training = False (and returns None).",
        )
    if torch.equal(before["fc2.weight"], after["fc2.weight"]):
        raise _failure(ex, "fc2 did not train", "freeze block 1 only.")
    _passed(ex, "conv1 and bn1 (weights and running statistics) unchanged through train-mode steps")


# --- 7.1 ---------------------------------------------------------------------------------------


def _png_fixture(root: Any, n_per_class: int = 2) -> None:
    """A tiny ImageFolder of real-looking 28×28 grey PNGs (3 classes) under ``root``."""
    from PIL import Image

    g = np.random.default_rng(0)
    for c, name in enumerate(("0_a", "1_b", "2_c")):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(n_per_class):
            pixels = g.integers(0, 256, (28, 28), dtype=np.uint8)
            pixels[c * 5 : c * 5 + 5] = 255 - c * 40
            Image.fromarray(pixels).save(folder / f"{i}.png")


def check_png_dataset(dataset_cls: Callable[..., Any]) -> None:
    """Exercise 7.1: ``dataset_cls(root)`` yields the same ``(tensor, label)`` pairs as
    ``ImageFolder`` (grey, ToTensor, Normalize) on a temporary folder, and a truncated PNG raises
    an error that names the file instead of a bare PIL error."""
    import tempfile
    from pathlib import Path

    from torchvision import datasets, transforms

    from .data import standard_transform
    from .pngfolder import BadImageError

    ex = "7.1"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "pngs"
        _png_fixture(root)
        reference = datasets.ImageFolder(
            root, transform=transforms.Compose([transforms.Grayscale(1), standard_transform()])
        )
        try:
            ds = dataset_cls(root)
            n = len(ds)
            items = [ds[i] for i in range(n)] if n == len(reference) else []
        except NotImplementedError:
            raise
        except Exception as err:
            raise _failure(
                ex, f"raised {type(err).__name__} on a clean folder: {err}", "see the task text."
            ) from err
        if n != len(reference):
            raise _failure(
                ex, f"len() is {n}, ImageFolder finds {len(reference)}", "return len(self.samples)."
            )
        for i, ((x, y), (x_ref, y_ref)) in enumerate(zip(items, reference, strict=True)):
            if not isinstance(x, torch.Tensor) or tuple(x.shape) != tuple(x_ref.shape):
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise _failure(
                    ex,
                    f"item {i} is {shape}, expected a tensor of shape {tuple(x_ref.shape)}",
                    "open with PIL, .convert('L'), then apply self.transform.",
                )
            if int(y) != y_ref:
                raise _failure(
                    ex,
                    f"item {i} has label {y}, expected {y_ref}",
                    "return the label stored with the path in self.samples.",
                )
            if not torch.allclose(x, x_ref, atol=1e-6):
                hint = (
                    "values differ from ImageFolder's: normalise with Fashion-MNIST's mean/std "
                    "(self.transform does it), and read the file of item i (self.samples[i])."
                )
                raise _failure(ex, f"item {i}'s pixels differ from ImageFolder's", hint)
        bad = root / "1_b" / "1.png"
        data = bad.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
        try:
            ds = dataset_cls(root)
            for i in range(len(ds)):
                ds[i]
        except NotImplementedError:
            raise
        except Exception as err:
            if "1.png" not in str(err) or not isinstance(err, (BadImageError, ValueError)):
                raise _failure(
                    ex,
                    f"a truncated PNG raised {type(err).__name__}: {str(err)[:120]!r}",
                    "catch PIL's OSError in __getitem__ and raise BadImageError(f'{path}: "
                    "...') from it, so the message names the file (also inside a worker).",
                ) from err
        else:
            raise _failure(
                ex,
                "a truncated PNG was read without an error",
                "call img.load() (or .convert) inside the try: PIL decodes lazily.",
            )
    _passed(
        ex,
        f"{n} items match ImageFolder (tensors and labels); a truncated PNG raises an error "
        "naming the file",
    )


# --- Chapter 8 and 10 checks ---

__all__ += [
    "check_cond_export",
    "check_dynamic_export",
    "check_gradcam_weighting",
    "check_normalize_cams",
    "check_traced_file",
]


def _seeded_cnn(seed: int, **kwargs: Any) -> FashionCNN:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return FashionCNN(**kwargs)


def _fixed_batch(n: int, seed: int, bright: bool = False) -> torch.Tensor:
    """``n`` random 28×28 images with pixels in [0, 0.3] (dark) or [0.7, 1] (bright)."""
    x = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) * 0.3
    return 1 - x if bright else x


# --- 8.1 ---------------------------------------------------------------------------------------


def check_traced_file(path: Any, model: nn.Module, tol: float = 1e-5) -> None:
    """Exercise 8.1: ``path`` is a TorchScript file whose outputs match ``model`` (≤ ``tol``).

    The file is loaded with ``torch.jit.load`` (no model class needed) and run on fixed batches
    of 4 and 9 images; ``model`` runs in eval mode on the same batches.

    Raises:
        AssertionError: no file, not a TorchScript file, or outputs that differ, with a hint.
    """
    from pathlib import Path

    ex = "8.1"
    if path is None:
        raise _failure(
            ex, "path is None", "save the traced model (traced.save(path)) and set path."
        )
    path = Path(path)
    if not path.is_file():
        raise _failure(ex, f"there is no file {path.name!r}", "call traced.save(path) first.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            loaded = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:
        try:
            torch.load(path, weights_only=True)
            hint = (
                "this file was written by torch.save: a state_dict or pickled module needs the "
                "model's Python class to load. Save the traced module itself: traced.save(path)."
            )
        except Exception:
            hint = "write the file with traced.save(path) or torch.jit.save(traced, path)."
        raise _failure(
            ex, f"torch.jit.load cannot read {path.name} ({type(err).__name__})", hint
        ) from err
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for n, seed in ((4, 81), (9, 82)):
                x = (_fixed_batch(n, seed) - 0.2860) / 0.3530
                expected = model(x.to(device)).cpu()
                try:
                    got = loaded(x)
                except Exception as err:
                    raise _failure(
                        ex,
                        f"the loaded model failed on a batch of {n} images [{n}, 1, 28, 28] "
                        f"({type(err).__name__})",
                        "trace the classifier itself with an example batch of images, "
                        "torch.jit.trace(model, x[:4]), and save what trace returns.",
                    ) from err
                if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
                    raise _failure(
                        ex,
                        f"the loaded model returned {getattr(got, 'shape', type(got).__name__)} "
                        f"for a batch of {n}, expected {tuple(expected.shape)}",
                        "trace the classifier itself: torch.jit.trace(model, example_batch).",
                    )
                diff = float((got - expected).abs().max())
                if diff > tol:
                    again = float((loaded(x) - got).abs().max())
                    hint = (
                        "the file's outputs change from call to call: it was traced in training "
                        "mode, with dropout recorded. Call model.eval() before torch.jit.trace."
                        if again > 0
                        else "trace the model you were given (its trained weights) in eval mode, "
                        "not a new or retrained one."
                    )
                    raise _failure(
                        ex, f"outputs differ from the model's by {diff:.2e} (> {tol:g})", hint
                    )
    finally:
        model.train(was_training)
    _passed(
        ex,
        f"{path.name} loads with torch.jit.load, no model class needed, and matches the model "
        f"within {tol:g} on batches of 4 and 9",
    )


# --- 8.2 ---------------------------------------------------------------------------------------


def check_dynamic_export(program: Any, model: nn.Module, tol: float = 1e-5) -> None:
    """Exercise 8.2: ``program`` is ``torch.export.export(model, ...)`` with a dynamic batch.

    It must be an ``ExportedProgram`` that accepts batches of 1, 3 and 64 images and matches
    ``model`` (eval mode) to ``tol``.

    Raises:
        AssertionError: with a hint (a fixed batch size shows up as an error at another size).
    """
    ex = "8.2"
    if not isinstance(program, torch.export.ExportedProgram):
        raise _failure(
            ex,
            f"program is {type(program).__name__}, not an ExportedProgram",
            "pass what torch.export.export(...) returns (not its .module()).",
        )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    module = program.module()
    try:
        for n in (1, 3, 64):
            x = (_fixed_batch(n, 80 + n) - 0.2860) / 0.3530
            try:
                with torch.no_grad():
                    got = module(x)
            except Exception as err:
                raise _failure(
                    ex,
                    f"the program refused a batch of {n} ({type(err).__name__})",
                    "declare the batch dimension dynamic: dynamic_shapes={'x': {0: "
                    "torch.export.Dim('batch', min=1, max=1024)}}; without it the program "
                    "accepts only the example's batch size.",
                ) from err
            with torch.no_grad():
                diff = float((got - model(x.to(device)).cpu()).abs().max())
            if diff > tol:
                raise _failure(
                    ex,
                    f"outputs differ from the model's by {diff:.2e} on a batch of {n}",
                    "export the trained model you were given, after model.eval().",
                )
    finally:
        model.train(was_training)
    _passed(
        ex,
        f"the exported program accepts batches of 1, 3 and 64 and matches the model within {tol:g}",
    )


# --- 8.3 ---------------------------------------------------------------------------------------


def check_cond_export(module_cls: Callable[[nn.Module], nn.Module], tol: float = 1e-5) -> None:
    """Exercise 8.3: ``module_cls(classifier)`` behaves like ``InvertIfBright`` *and* exports.

    The module is exported with a dark example batch; the program must match
    :class:`course_utils.export.InvertIfBright` on dark and on bright batches.

    Raises:
        AssertionError: export fails (a Python ``if`` on a tensor), or a branch is wrong.
    """
    from .export import InvertIfBright, export_model

    ex = "8.3"
    classifier = _seeded_cnn(8, width=4, hidden=16).eval()
    try:
        wrapper = module_cls(classifier).eval()
    except NotImplementedError:
        raise
    except Exception as err:
        raise _failure(
            ex,
            f"building the module raised {type(err).__name__}: {err}",
            "its __init__ takes the classifier (and an optional threshold).",
        ) from err
    reference = InvertIfBright(classifier).eval()
    try:
        program = export_model(wrapper, _fixed_batch(4, 83)).module()
    except NotImplementedError:
        raise
    except Exception as err:
        hint = (
            "a Python `if` on a tensor's value cannot be exported: write both branches as "
            "functions and choose with torch.cond(pred, true_fn, false_fn, (x,))."
            if "data-dependent" in str(err) or "GuardOnDataDependent" in type(err).__name__
            else "read the error; each branch of torch.cond must return a tensor of the same "
            "shape (return x.clone() rather than x itself)."
        )
        raise _failure(ex, f"torch.export failed ({type(err).__name__})", hint) from err
    for name, x in (
        ("dark", _fixed_batch(4, 84)),
        ("bright", _fixed_batch(4, 85, bright=True)),
        ("bright, batch 7", _fixed_batch(7, 86, bright=True)),
    ):
        with torch.no_grad():
            diff = float((program(x) - reference(x)).abs().max())
        if diff > tol:
            raise _failure(
                ex,
                f"the exported program differs from InvertIfBright on a {name} batch ({diff:.2e})",
                "bright batches (mean > threshold) must be inverted (1 - x), dark ones left "
                "alone, then normalised with (x - mean) / std before the classifier.",
            )
    _passed(
        ex,
        "the module exports with torch.export and keeps both branches: it matches "
        f"InvertIfBright on dark and bright batches within {tol:g}",
    )


# --- 10.1 --------------------------------------------------------------------------------------


def _gradcam_fixture() -> tuple[nn.Module, torch.Tensor, list[int]]:
    model = _seeded_cnn(10, width=8, hidden=32).eval()
    x = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(10))
    return model, x, [0, 3, 3, 7, 9]


def check_gradcam_weighting(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """Exercise 10.1: ``fn(activations, gradients) -> [N, h, w]``, the Grad-CAM weighting step.

    ``activations`` and ``gradients`` (``[N, K, h, w]``) are taken from ``act2`` of a small,
    seeded ``FashionCNN``; the result must equal torchcam's un-normalised ``GradCAM`` map.

    Raises:
        AssertionError: with a hint naming the likely mistake.
    """
    from .cam import torchcam_gradcam

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
        raise _failure(
            ex,
            f"raised {type(err).__name__}: {err}",
            "weights = gradients.mean(dim=(2, 3), keepdim=True) has shape [N, K, 1, 1] and "
            "broadcasts against activations [N, K, h, w].",
        ) from err
    if not isinstance(result, torch.Tensor) or tuple(result.shape) != tuple(expected.shape):
        shape = tuple(result.shape) if isinstance(result, torch.Tensor) else type(result).__name__
        raise _failure(
            ex,
            f"returned {shape}, expected a tensor of shape {tuple(expected.shape)}",
            "sum the weighted activations over the channel dimension (dim=1).",
        )
    result = result.detach().float()
    if torch.allclose(result, expected, rtol=1e-4, atol=1e-6):
        _passed(
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
    raise _failure(ex, f"maps differ from torchcam's by up to {diff:.3g}", hint)


# --- 10.2 --------------------------------------------------------------------------------------


def check_normalize_cams(fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Exercise 10.2: ``fn(cams)`` scales each map of ``[N, h, w]`` to [0, 1] on its own.

    Compared with :func:`course_utils.cam.normalize_cams` on maps of different ranges, one
    constant map (→ zeros, not NaN) and one with negative values.

    Raises:
        AssertionError: with a hint naming the likely mistake.
    """
    from .cam import normalize_cams

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
        raise _failure(
            ex,
            f"raised {type(err).__name__}: {err}",
            "reduce over each map's own pixels: cams.flatten(1).amin(1) gives one minimum per map.",
        ) from err
    if not isinstance(result, torch.Tensor) or result.shape != cams.shape:
        raise _failure(
            ex,
            f"returned {getattr(result, 'shape', type(result).__name__)}, "
            f"expected {tuple(cams.shape)}",
            "return one normalised map per input map.",
        )
    if torch.isnan(result).any():
        raise _failure(
            ex,
            "the constant map became NaN",
            "add a small eps to the denominator (max - min + 1e-8): a constant map becomes zeros.",
        )
    if torch.allclose(result, expected, atol=1e-5):
        _passed(ex, "each map is scaled to [0, 1] on its own, and a constant map gives zeros")
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
    raise _failure(ex, "normalised maps differ from the reference", hint)


# --- Chapter 2–4 checks ---
# BatchNorm placement and arithmetic (2.x), dead units and epochs-to-X (3.x), dropout (4.x).

__all__ += [
    "check_batchnorm_fn",
    "check_batchnorm_placement",
    "check_count_dead",
    "check_dead_per_layer",
    "check_epochs_to_reach",
    "check_inverted_dropout",
    "check_mc_dropout",
]


def _build(ex: str, model_cls: Callable[..., nn.Module], **kwargs: Any) -> nn.Module:
    """``model_cls(**kwargs)`` with the RNG forked, turning a crash into a ❌ with a hint."""
    name = getattr(model_cls, "__name__", repr(model_cls))
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = model_cls(**kwargs)
    except NotImplementedError:
        raise
    except Exception as err:
        raise _failure(
            ex, f"{name}() raised {type(err).__name__}: {err}", "read the error above."
        ) from err
    if not isinstance(model, nn.Module):
        raise _failure(ex, f"{name}() is not an nn.Module", "subclass nn.Module.")
    return model


# --- 2.1 ---------------------------------------------------------------------------------------


def check_batchnorm_placement(model_cls: Callable[..., nn.Module]) -> None:
    """Exercise 2.1: a CNN with a ``BatchNorm2d`` directly after every ``Conv2d``.

    ``model_cls()`` is traced on a batch ``[4, 1, 28, 28]`` with forward hooks: the output of every
    convolution must be the very tensor that a ``BatchNorm2d`` receives next, with
    ``num_features`` equal to the conv's ``out_channels``; every ``BatchNorm2d`` must be used; the
    logits must have shape ``[4, 10]``.

    Raises:
        AssertionError: with a hint (e.g. BatchNorm after the ReLU, wrong ``num_features``).
    """
    ex = "2.1"
    model = _build(ex, model_cls)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if len(convs) < 2:
        raise _failure(ex, f"the model has {len(convs)} Conv2d layers", "keep both conv layers.")
    if not norms:
        raise _failure(
            ex,
            "the model has no nn.BatchNorm2d layer",
            "add nn.BatchNorm2d(out_channels) after each conv (BatchNorm1d is for [N, F] inputs).",
        )
    outputs: dict[int, nn.Module] = {}  # id(tensor) -> the module that produced it
    consumers: dict[int, list[nn.Module]] = {}  # id(module) -> modules fed by its output
    keep: list[torch.Tensor] = []  # keep tensors alive so that their ids stay unique

    fired: set[int] = set()

    def record(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        fired.add(id(module))
        if args and isinstance(args[0], torch.Tensor) and id(args[0]) in outputs:
            consumers.setdefault(id(outputs[id(args[0])]), []).append(module)
        if isinstance(out, torch.Tensor):
            outputs[id(out)] = module
            keep.append(out)

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(record) for m in leaves]
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    try:
        model.train()
        out = model(x)
    except NotImplementedError:
        raise
    except Exception as err:
        hint = (
            "num_features must equal the channels coming out of the conv before it "
            "(conv2 has 64 output channels)."
            if "running_mean" in str(err) or "weight" in str(err) or "features" in str(err)
            else "use nn.BatchNorm2d (for [N, C, H, W] feature maps) and check each num_features."
        )
        raise _failure(ex, f"the forward pass raised {type(err).__name__}: {err}", hint) from err
    finally:
        for hook in hooks:
            hook.remove()
    for i, conv in enumerate(convs, start=1):
        if id(conv) not in fired:
            raise _failure(ex, f"conv #{i} is never used in forward", "use every conv in forward.")
        fed = consumers.get(id(conv), [])
        nxt = next((m for m in fed if isinstance(m, nn.BatchNorm2d)), None)
        if nxt is None:
            what = type(fed[0]).__name__ if fed else "a function such as F.relu"
            raise _failure(
                ex,
                f"conv #{i}'s output does not go to a BatchNorm2d (it goes to {what})",
                "normalise the conv's output before the activation: conv → BatchNorm2d → ReLU.",
            )
        if nxt.num_features != conv.out_channels:
            raise _failure(
                ex,
                f"conv #{i} has {conv.out_channels} output channels but its BatchNorm2d has "
                f"num_features={nxt.num_features}",
                "num_features is the number of channels the BatchNorm normalises.",
            )
    used = {id(m) for fed in consumers.values() for m in fed}
    if any(id(n) not in used for n in norms):
        raise _failure(
            ex, "a BatchNorm2d layer is defined but not used", "call each BatchNorm2d in forward."
        )
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (4, 10):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise _failure(ex, f"a [4, 1, 28, 28] batch gave {shape}", "return [N, 10] logits.")
    biases = sum(c.bias is not None for c in convs)
    note = (
        "conv biases dropped (BatchNorm's shift replaces them)"
        if biases == 0
        else f"{biases} conv(s) keep a bias, which BatchNorm makes redundant (bias=False saves it)"
    )
    _passed(
        ex,
        f"each of the {len(convs)} convs feeds a BatchNorm2d with matching num_features; {note}",
    )


# --- 2.2 ---------------------------------------------------------------------------------------


def _bn_cases() -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    shifted = torch.randn(8, 3, 5, 5, generator=g) * torch.tensor([1.0, 3.0, 0.5]).view(
        1, 3, 1, 1
    ) + torch.tensor([2.0, -1.0, 0.0]).view(1, 3, 1, 1)
    return [
        ("[8, 3, 5, 5], channels with different means and scales", shifted),
        ("[2, 4, 1, 1], a tiny batch", torch.randn(2, 4, 1, 1, generator=g)),
    ]


def check_batchnorm_fn(fn: Callable[..., Any]) -> None:
    """Exercise 2.2: ``batchnorm_train(x, gamma, beta, running_mean, running_var, momentum, eps)``.

    Must return ``(y, new_running_mean, new_running_var)`` exactly as ``nn.BatchNorm2d`` computes
    them in training mode: per-channel statistics over ``(N, H, W)``, the *biased* variance to
    normalise, the *unbiased* variance in the running update, and
    ``new = (1 - momentum) * old + momentum * batch``.

    Raises:
        AssertionError: with a hint naming the likely mistake.
    """
    ex = "2.2"
    for case, x in _bn_cases():
        c = x.shape[1]
        gamma, beta = torch.linspace(0.5, 2.0, c), torch.linspace(-1.0, 1.0, c)
        rm, rv = torch.linspace(-0.5, 0.5, c), torch.linspace(0.5, 1.5, c)
        ref_rm, ref_rv = rm.clone(), rv.clone()
        ref_y = torch.nn.functional.batch_norm(
            x, ref_rm, ref_rv, gamma, beta, training=True, momentum=0.1, eps=1e-5
        )
        try:
            result = fn(x.clone(), gamma.clone(), beta.clone(), rm.clone(), rv.clone(), 0.1, 1e-5)
        except NotImplementedError:
            raise
        except Exception as err:
            raise _failure(
                ex,
                f"batchnorm_train raised {type(err).__name__} on case {case}: {err}",
                "reduce over dims (0, 2, 3) and reshape per-channel vectors to [1, C, 1, 1].",
            ) from err
        if not isinstance(result, tuple | list) or len(result) != 3:
            raise _failure(
                ex, "did not return three tensors", "return (y, new_running_mean, new_running_var)."
            )
        y, new_rm, new_rv = (torch.as_tensor(r) for r in result)
        if tuple(y.shape) != tuple(x.shape) or tuple(new_rm.shape) != (c,):
            raise _failure(
                ex,
                f"shapes: y {tuple(y.shape)}, running_mean {tuple(new_rm.shape)} on case {case}",
                f"y has x's shape {tuple(x.shape)}; the running statistics have one value per "
                f"channel ({c},).",
            )
        if not torch.allclose(y, ref_y, atol=1e-4):
            mean = x.mean(dim=(0, 2, 3), keepdim=True)
            unbiased = (x - mean) / torch.sqrt(x.var(dim=(0, 2, 3), keepdim=True) + 1e-5)
            bshape = (1, c, 1, 1)
            if torch.allclose(y, unbiased * gamma.view(bshape) + beta.view(bshape), atol=1e-4):
                hint = "normalise with the biased variance (unbiased=False), as BatchNorm does."
            elif torch.allclose(
                y,
                (x - mean) / torch.sqrt(x.var(dim=(0, 2, 3), keepdim=True, unbiased=False) + 1e-5),
                atol=1e-4,
            ):
                hint = "apply the learned scale and shift: gamma * x_hat + beta, per channel."
            else:
                hint = (
                    "the statistics are per channel, over the batch and both spatial dims: "
                    "x.mean(dim=(0, 2, 3)); not per image or per pixel."
                )
            raise _failure(ex, f"y differs from nn.BatchNorm2d on case {case}", hint)
        if not torch.allclose(new_rm, ref_rm, atol=1e-5):
            hint = (
                "new = (1 - momentum) * old + momentum * batch_mean (momentum weighs the batch)."
                if torch.allclose(new_rm, 0.9 * x.mean(dim=(0, 2, 3)) + 0.1 * rm, atol=1e-5)
                else "update the running mean with the batch mean per channel."
            )
            raise _failure(ex, f"new running_mean is wrong on case {case}", hint)
        if not torch.allclose(new_rv, ref_rv, atol=1e-4):
            biased = x.var(dim=(0, 2, 3), unbiased=False)
            hint = (
                "the running variance uses the *unbiased* batch variance (divide by n - 1), "
                "even though y is normalised with the biased one."
                if torch.allclose(new_rv, 0.9 * rv + 0.1 * biased, atol=1e-5)
                else "new = (1 - momentum) * old + momentum * unbiased batch variance."
            )
            raise _failure(ex, f"new running_var is wrong on case {case}", hint)
    _passed(
        ex,
        "y, running_mean and running_var match torch.nn.functional.batch_norm (training mode) "
        f"on {len(_bn_cases())} cases",
    )


# --- 3.1 ---------------------------------------------------------------------------------------


def _dead_cases() -> list[tuple[str, torch.Tensor, int]]:
    """Post-ReLU activations with a known number of dead units."""
    g = torch.Generator().manual_seed(0)
    conv = torch.rand(6, 5, 4, 4, generator=g)
    conv[:, [1, 3]] = 0  # channels 1 and 3 never fire: 2 dead
    conv[:, 4] = 0
    conv[2, 4, 3, 0] = 0.7  # channel 4 fires once, in one image at one position: alive
    conv[0, 0] = 0  # channel 0 is silent in image 0 only: alive
    fc = torch.rand(5, 7, generator=g)
    fc[:, [0, 5, 6]] = 0
    fc[4, 6] = 0.1  # feature 6 fires in the last image only: alive
    return [
        ("conv activations [6, 5, 4, 4]", conv, 2),
        ("fully connected activations [5, 7]", fc, 2),
        ("all alive [3, 2, 2, 2]", torch.ones(3, 2, 2, 2), 0),
        ("all dead [2, 3]", torch.zeros(2, 3), 3),
    ]


def check_count_dead(fn: Callable[[torch.Tensor], int]) -> None:
    """Exercise 3.1: ``count_dead(activations) -> int`` for post-ReLU ``[N, C, H, W]`` or
    ``[N, F]`` activations: units (channels or features) that are zero for every image and
    position, on hand-built cases.

    Raises:
        AssertionError: with a hint (zero *elements*, dead in *some* image, wrong dimension).
    """
    ex = "3.1"
    for case, acts, expected in _dead_cases():
        try:
            result = fn(acts.clone())
        except NotImplementedError:
            raise
        except Exception as err:
            raise _failure(
                ex,
                f"count_dead raised {type(err).__name__} on {case}: {err}",
                "handle both 4-d [N, C, H, W] and 2-d [N, F] inputs: move the unit dimension "
                "(dim 1) first and flatten the rest.",
            ) from err
        if isinstance(result, torch.Tensor) and result.numel() == 1:
            result = result.item()
        if isinstance(result, bool) or not isinstance(result, int | np.integer):
            raise _failure(
                ex,
                f"returned {type(result).__name__} {result!r}, not an int",
                "return a Python int (int(...) or .item()).",
            )
        if result == expected:
            continue
        per_image = (
            int((acts.flatten(2).amax(-1) == 0).any(0).sum())
            if acts.dim() == 4
            else int((acts == 0).any(0).sum())
        )
        if result == int((acts == 0).sum()):
            hint = "count units (channels or features), not zero elements."
        elif result == per_image:
            hint = "a unit is dead only if it is zero for *every* image, not for some image."
        else:
            hint = (
                "a unit is dim 1 (a channel of [N, C, H, W] or a feature of [N, F]); it is dead "
                "if its maximum over all other dimensions is 0."
            )
        raise _failure(ex, f"returned {result} on {case}, expected {expected}", hint)
    _passed(ex, f"count_dead is right on {len(_dead_cases())} hand-built cases")


# --- 3.2 ---------------------------------------------------------------------------------------


def _dead_fixture() -> tuple[nn.Module, torch.Tensor, dict[str, int]]:
    """A small ReLU CNN with known dead units, an input batch, and the expected counts."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = FashionCNN(width=4, hidden=8)
    with torch.no_grad():
        model.conv1.bias[[0, 2]] = -100.0  # channels 0 and 2 of conv1 never fire
        model.conv2.bias[[1]] = -100.0
        model.fc1.bias[[3, 4, 7]] = -100.0
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    expected = {}
    with torch.no_grad():
        model.eval()
        h1 = model.act1(model.conv1(x))
        h2 = model.act2(model.conv2(model.pool(h1)))
        h3 = model.act3(model.fc1(torch.flatten(model.pool(h2), 1)))
    for name, h in (("act1", h1), ("act2", h2), ("act3", h3)):
        expected[name] = int((h.transpose(0, 1).flatten(1).amax(1) == 0).sum())
    return model.train(), x, expected


def check_dead_per_layer(fn: Callable[[nn.Module, torch.Tensor], Mapping[str, int]]) -> None:
    """Exercise 3.2: ``dead_per_layer(model, x) -> {relu module name: dead units}``.

    Run on a small ``FashionCNN`` whose biases make some units dead. The answer must name every
    ``nn.ReLU`` module (``act1``, ``act2``, ``act3``) with the right count; no hook may remain
    afterwards, also when the forward pass raises (a batch of the wrong image size), and a second
    call must give the same answer.

    Raises:
        AssertionError: with a hint.
    """
    ex = "3.2"
    model, x, expected = _dead_fixture()
    try:
        result = fn(model, x)
    except NotImplementedError:
        raise
    except Exception as err:
        raise _failure(
            ex, f"dead_per_layer raised {type(err).__name__}: {err}", "read the error above."
        ) from err
    finally:
        left = hook_count(model)
    if left:
        raise _failure(
            ex,
            f"{left} hook(s) are still registered after dead_per_layer returned",
            "keep the handles that register_forward_hook returns and call handle.remove() on "
            "each, in a `finally:` block.",
        )
    if not isinstance(result, Mapping):
        raise _failure(ex, f"returned {type(result).__name__}", "return a dict {name: count}.")
    if set(result) != set(expected):
        raise _failure(
            ex,
            f"keys {sorted(result)}, expected {sorted(expected)}",
            "hook the nn.ReLU modules, named as model.named_modules() names them.",
        )
    wrong = {k: result[k] for k in expected if result[k] != expected[k]}
    if wrong:
        raise _failure(
            ex,
            f"counts {dict(result)}, expected {expected}",
            "record each ReLU's *output* in the hook and count its dead units with count_dead.",
        )
    again = fn(model, x)
    if dict(again) != dict(result):
        raise _failure(
            ex,
            f"a second call gave {dict(again)}",
            "start from fresh recordings each call, and remove the hooks so that they do not "
            "pile up.",
        )
    try:
        fn(model, torch.zeros(2, 1, 30, 30))
    except NotImplementedError:
        raise
    except Exception:  # noqa: BLE001 - the forward pass is meant to fail here
        pass
    if hook_count(model):
        raise _failure(
            ex,
            "hooks stay registered when the forward pass raises",
            "remove the hooks in a `finally:` block (or a context manager), so that an error "
            "in model(x) cannot leave them behind.",
        )
    _passed(
        ex,
        f"dead units per ReLU {expected}; hooks removed, also when the forward pass raises",
    )


# --- 3.3 ---------------------------------------------------------------------------------------


_EPOCHS_TO_CASES: tuple[tuple[tuple[float, ...], float, int | None], ...] = (
    ((0.50, 0.86, 0.70, 0.90), 0.85, 2),  # the first time, not the best epoch
    ((0.70, 0.80, 0.84, 0.86, 0.85), 0.84, 3),  # reached exactly: >= counts
    ((0.90, 0.80, 0.95), 0.85, 1),  # the first epoch already
    ((0.50, 0.60), 0.85, None),  # never
)


def check_epochs_to_reach(fn: Callable[[Sequence[float], float], int | None]) -> None:
    """Exercise 3.3: ``epochs_to_reach(accuracies, target)``: the first epoch (counted from 1)
    whose accuracy is ``>= target``, or ``None`` if none is.

    Raises:
        AssertionError: with a hint (0-based epochs, ``>`` instead of ``>=``, best epoch…).
    """
    ex = "3.3"
    for accs, target, expected in _EPOCHS_TO_CASES:
        try:
            result = fn(list(accs), target)
        except NotImplementedError:
            raise
        except Exception as err:
            raise _failure(
                ex, f"raised {type(err).__name__} on {accs}: {err}", "read the error above."
            ) from err
        if result == expected and (result is None) == (expected is None):
            continue
        strict = next((i for i, a in enumerate(accs, start=1) if a > target), None)
        if expected is None:
            hint = "return None when no epoch reaches the target (not 0, -1 or len)."
        elif result == expected - 1:
            hint = "epochs are counted from 1: the first epoch is epoch 1, not index 0."
        elif result == strict:
            hint = "reaching the target exactly counts: use >=."
        else:
            hint = "return the *first* epoch that reaches the target, not the best one."
        raise _failure(
            ex, f"{accs} with target {target}: got {result!r}, expected {expected}", hint
        )
    _passed(ex, f"epochs_to_reach is right on {len(_EPOCHS_TO_CASES)} curves")


# --- 4.1 ---------------------------------------------------------------------------------------


def check_inverted_dropout(fn: Callable[[torch.Tensor, float, bool], torch.Tensor]) -> None:
    """Exercise 4.1: ``inverted_dropout(x, p, training) -> Tensor``.

    In training mode each element is zeroed with probability ``p`` and the survivors are scaled by
    ``1 / (1 - p)``; in eval mode (and for ``p = 0``) ``x`` is returned unchanged; ``p = 1`` gives
    zeros (no NaN); ``p`` outside ``[0, 1]`` raises ``ValueError``; ``x`` is not modified.
    Statistics are checked on 200,000 elements.

    Raises:
        AssertionError: with a hint.
    """
    ex = "4.1"
    g = torch.Generator().manual_seed(0)
    x = torch.rand(400, 500, generator=g) + 0.5

    def call(t: torch.Tensor, p: float, training: bool) -> torch.Tensor:
        original = t.clone()
        try:
            with torch.random.fork_rng():
                torch.manual_seed(int(p * 1000) + training)
                out = fn(t, p, training)
        except NotImplementedError:
            raise
        except Exception as err:
            raise _failure(
                ex,
                f"inverted_dropout raised {type(err).__name__} (p={p}): {err}",
                "read the error above; a valid p must not raise.",
            ) from err
        if not torch.equal(t, original):
            raise _failure(
                ex, "the input x was modified", "build a new tensor: x * mask / (1 - p)."
            )
        if not isinstance(out, torch.Tensor) or out.shape != t.shape:
            raise _failure(ex, f"p={p}: output is not a tensor of x's shape", "return a tensor.")
        return out

    if not torch.equal(call(x, 0.5, False), x):
        raise _failure(
            ex,
            "in eval mode (training=False) the output differs from x",
            "dropout does nothing at evaluation time: return x unchanged.",
        )
    if not torch.equal(call(x, 0.0, True), x):
        raise _failure(ex, "p=0 changed x", "with p=0 nothing is dropped and the scale is 1.")
    ones = torch.ones_like(x)
    for p in (0.3, 0.5):
        out = call(ones, p, True)
        dropped = (out == 0).float().mean().item()
        kept = out[out != 0]
        if abs(dropped - (1 - p)) < 0.02 and abs(dropped - p) > 0.02:
            raise _failure(
                ex,
                f"p={p}: {dropped:.1%} of the elements were zeroed",
                "p is the probability to *drop*: keep an element when rand >= p.",
            )
        if abs(dropped - p) > 0.01:
            raise _failure(
                ex,
                f"p={p}: {dropped:.1%} of the elements were zeroed, expected about {p:.0%}",
                "zero each element independently with probability p: mask = torch.rand_like(x) "
                ">= p.",
            )
        if not torch.allclose(kept, torch.full_like(kept, 1 / (1 - p))):
            value = kept[0].item() if len(kept) else float("nan")
            hint = (
                "scale the survivors by 1 / (1 - p), so that the expected value is unchanged."
                if math.isclose(value, 1.0)
                else "divide by (1 - p), do not multiply."
                if math.isclose(value, 1 - p)
                else "the survivors are x / (1 - p)."
            )
            raise _failure(ex, f"p={p}: kept elements of a tensor of ones are {value:.3f}", hint)
    out = call(x, 0.5, True)
    mask = out != 0
    if not torch.allclose(out[mask], x[mask] / 0.5):
        raise _failure(ex, "kept elements are not x / (1 - p)", "multiply x by the mask first.")
    if torch.equal(call(x, 0.5, True), fn(x, 0.5, True)):
        raise _failure(ex, "two calls gave the same mask", "draw a fresh random mask every call.")
    out = call(x, 1.0, True)
    if not torch.equal(out, torch.zeros_like(x)):
        raise _failure(
            ex,
            "p=1 did not give zeros (1 / (1 - p) divides by zero)",
            "with p=1 every element is dropped: return torch.zeros_like(x).",
        )
    for bad in (-0.1, 1.5):
        try:
            fn(x, bad, True)
        except NotImplementedError:
            raise
        except ValueError:
            continue
        except Exception as err:
            raise _failure(
                ex, f"p={bad} raised {type(err).__name__}, not ValueError", "raise ValueError."
            ) from err
        raise _failure(ex, f"p={bad} was accepted", "raise ValueError unless 0 <= p <= 1.")
    _passed(
        ex,
        "eval mode and p=0 return x, p=0.3/0.5 zero that share and scale survivors by "
        "1/(1-p), p=1 gives zeros, bad p raises ValueError",
    )


# --- 4.2 ---------------------------------------------------------------------------------------


def check_mc_dropout(fn: Callable[[nn.Module], Any]) -> None:
    """Exercise 4.2: ``enable_mc_dropout(model)``: eval mode everywhere except the dropout layers.

    Run on ``FashionCNN(norm="batch", dropout=0.5, conv_dropout=0.2)``: afterwards every
    BatchNorm must be in eval mode (its running statistics unchanged by a forward pass), every
    dropout layer (``nn.Dropout`` and ``nn.Dropout2d``) in training mode, and two forward passes
    on the same input must differ.

    Raises:
        AssertionError: with a hint.
    """
    ex = "4.2"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = FashionCNN(width=4, hidden=16, norm="batch", dropout=0.5, conv_dropout=0.2)
    try:
        fn(model)
    except NotImplementedError:
        raise
    except Exception as err:
        raise _failure(
            ex, f"enable_mc_dropout raised {type(err).__name__}: {err}", "read it."
        ) from err
    drops = {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.dropout._DropoutNd)}
    norms = {
        n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }
    off = [n for n, m in drops.items() if not m.training]
    if off:
        raise _failure(
            ex,
            f"dropout layers {off} are in eval mode",
            "after model.eval(), call .train() on every module that is an instance of "
            "nn.Dropout or nn.Dropout2d (both subclass nn.modules.dropout._DropoutNd).",
        )
    training_norms = [n for n, m in norms.items() if m.training]
    if training_norms:
        raise _failure(
            ex,
            f"BatchNorm layers {training_norms} are in training mode",
            "start from model.eval(): in training mode BatchNorm normalises with the batch's "
            "statistics and overwrites its running statistics.",
        )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        a, b = model(x), model(x)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    if changed:
        raise _failure(ex, f"a forward pass changed {changed}", "BatchNorm must be in eval mode.")
    if torch.equal(a, b):
        raise _failure(
            ex, "two forward passes gave identical outputs", "the dropout layers must be active."
        )
    _passed(
        ex,
        f"{len(norms)} BatchNorm layers in eval mode (running statistics untouched), "
        f"{len(drops)} dropout layers active, outputs vary between passes",
    )


# --- Chapter 9 checks ---

__all__ += ["check_preprocess_fn", "check_response_fn"]


def _encoded(image: Any, fmt: str = "PNG", **kw: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def _preprocess_cases() -> tuple[list[tuple[str, bytes, str]], list[tuple[str, bytes, str]]]:
    """``(name, bytes, hint)`` uploads that must work, and uploads that must raise ValueError."""
    from PIL import Image

    garment = np.zeros((28, 28), dtype=np.uint8)  # a light, smoothly shaded shape on black
    garment[3:26, 6:22] = np.linspace(90, 255, 16).round().astype(np.uint8)
    garment[3:10, 2:26] = 200
    photo = Image.new("RGB", (97, 61), "white")  # a dark garment on white, odd size, JPEG
    photo.paste((40, 50, 90), (30, 8, 70, 55))
    rgba = np.zeros((40, 64, 4), dtype=np.uint8)  # transparent (black) background
    rgba[5:35, 20:44, :3] = np.linspace(20, 120, 24).round().astype(np.uint8)[None, :, None]
    rgba[5:35, 20:44, 3] = 255  # an opaque garment, shaded from dark to mid-grey
    cutout = Image.fromarray(rgba, mode="RGBA")
    wide = np.zeros((30, 40), dtype=np.uint16)  # 16-bit: values up to 65535
    wide[5:25, 8:32] = 40000
    wide[10:20, 14:26] = 65535
    tall = Image.new("RGB", (12, 90), (255, 255, 255))
    tall.paste((0, 0, 0), (2, 10, 10, 80))
    palette = Image.new("RGB", (45, 33), (250, 250, 250))
    palette.paste((200, 0, 0), (10, 5, 35, 28))
    good = [
        (
            "a 28×28 Fashion-MNIST-style PNG",
            _encoded(Image.fromarray(garment, mode="L")),
            "a 28×28 light-on-black PNG must give exactly the training input: "
            "((pixels / 255) - MEAN) / STD, shape [1, 1, 28, 28].",
        ),
        (
            "a dark-on-white RGB JPEG, 97×61",
            _encoded(photo, "JPEG", quality=95),
            "convert to greyscale ('L'), invert when the border is light (mean > 127), then "
            "frame with crop_to_content → fit_to_square → stretch_contrast.",
        ),
        (
            "an RGBA PNG with a transparent background",
            _encoded(cutout),
            "composite the image onto a white background before converting to greyscale "
            "(Image.alpha_composite with a white RGBA image); transparent pixels are background.",
        ),
        (
            "a palette (mode 'P') PNG, 45×33",
            _encoded(palette.convert("P", palette=Image.Palette.ADAPTIVE)),
            "convert palette images to RGBA first, then composite and convert to 'L'.",
        ),
        (
            "a 16-bit greyscale PNG, 40×30",
            _encoded(Image.fromarray(wide)),
            "a 16-bit image has values up to 65535: scale with np.asarray(image) * 255 / 65535 "
            "(rounded) instead of convert('L'), which clips.",
        ),
        (
            "a 12×90 RGB PNG",
            _encoded(tall),
            "the framing must keep the aspect ratio: crop, then fit_to_square pads the short side.",
        ),
    ]
    full = _encoded(Image.fromarray(garment, mode="L"))
    jpeg = _encoded(photo, "JPEG")
    bad = [
        ("empty bytes", b"", "check for empty data and raise ValueError('… empty …')."),
        (
            "text, not an image",
            b"name,size\nshirt,M\n",
            "Image.open raises PIL.UnidentifiedImageError (an OSError): catch it and raise "
            "ValueError from it.",
        ),
        (
            "a GIF",
            _encoded(Image.new("RGB", (8, 8)), "GIF"),
            "accept PNG and JPEG only: Image.open(buffer, formats=['PNG', 'JPEG']).",
        ),
        (
            "a truncated PNG",
            full[: len(full) // 2],
            "Image.open reads only the header: call image.load() inside your try block, so a "
            "truncated file fails there (with an OSError you turn into ValueError).",
        ),
        (
            "a truncated JPEG",
            jpeg[: len(jpeg) // 3],
            "call image.load() inside the try block and turn the OSError into a ValueError.",
        ),
    ]
    return good, bad


def check_preprocess_fn(fn: Callable[[bytes], torch.Tensor]) -> None:
    """Exercise 9.1: ``preprocess_upload(data: bytes) -> torch.Tensor`` for the ``/predict`` API.

    Six uploads of odd sizes and modes (an exact 28×28 PNG, a dark-on-white JPEG, RGBA with
    transparency, a palette PNG, a 16-bit PNG, a 12×90 image) must give a float tensor
    ``[1, 1, 28, 28]`` within one grey level of :func:`course_utils.serve.preprocess_image`; five
    bad ones (empty, text, GIF, truncated PNG and JPEG) must raise ``ValueError``.

    Raises:
        AssertionError: with a hint naming the likely mistake.
    """
    from course_utils.data import MEAN, STD
    from course_utils.serve import preprocess_image

    ex = "9.1"
    good, bad = _preprocess_cases()
    for name, data, hint in good:
        try:
            result = fn(data)
        except NotImplementedError:
            raise
        except Exception as err:
            raise _failure(
                ex, f"{name}: preprocess_upload raised {type(err).__name__}: {err}", hint
            ) from err
        if not isinstance(result, torch.Tensor):
            raise _failure(
                ex,
                f"{name}: returned {type(result).__name__}, not a torch.Tensor",
                "return torch.from_numpy(...) of the normalised pixels (normalise() does it).",
            )
        if tuple(result.shape) != (1, 1, 28, 28):
            raise _failure(
                ex,
                f"{name}: shape {tuple(result.shape)}, expected (1, 1, 28, 28)",
                "the model takes a batch: [batch 1, channel 1, 28, 28]; .reshape(1, 1, 28, 28).",
            )
        if result.dtype != torch.float32:
            raise _failure(
                ex, f"{name}: dtype {result.dtype}", "convert to float32 before normalising."
            )
        expected = preprocess_image(data)
        pixels = (result.detach().float() * STD + MEAN) * 255
        reference = (expected * STD + MEAN) * 255
        if float((pixels - reference).abs().max()) <= 1.01:
            continue
        if float(result.min()) >= 0 and float(result.max()) <= 1.0:
            hint = (
                "normalise: (pixels / 255 - MEAN) / STD, with MEAN and STD from course_utils.data."
            )
        elif float(torch.corrcoef(torch.stack([pixels.flatten(), reference.flatten()]))[0, 1]) < 0:
            hint = (
                "the image came out with the wrong polarity: Fashion-MNIST is light on black, so "
                "invert (255 - grey) when the border's mean is above 127. " + hint
            )
        shown = float((pixels - reference).abs().max())
        raise _failure(
            ex, f"{name}: differs from the reference by up to {shown:.0f} grey levels", hint
        )
    for name, data, hint in bad:
        try:
            fn(data)
        except NotImplementedError:
            raise
        except ValueError as err:
            if not str(err):
                raise _failure(
                    ex, f"{name}: ValueError without a message", "say what is wrong with the file."
                ) from err
            continue
        except Exception as err:
            raise _failure(
                ex,
                f"{name}: raised {type(err).__name__} ({err}), not ValueError",
                "the API turns ValueError into a 4xx answer; anything else becomes a 500. " + hint,
            ) from err
        raise _failure(ex, f"{name}: no error was raised", hint)
    _passed(
        ex,
        f"preprocess_upload matches the API's preprocessing on {len(good)} uploads of odd sizes "
        f"and modes, and raises ValueError on {len(bad)} bad ones",
    )


def check_response_fn(fn: Callable[[nn.Module, torch.Tensor, int], dict[str, Any]]) -> None:
    """Exercise 9.2: ``make_response(model, x, top_k) -> dict``, the ``/predict`` JSON body.

    On a small CNN with dropout (so training mode changes its output) and three inputs, the
    result must survive ``json.dumps``, have ``label``, ``class_index`` and ``probabilities`` (the
    ``top_k`` largest softmax probabilities, largest first, as ``{"label", "class_index",
    "probability"}``), match :func:`course_utils.serve.predict_response`, and the forward pass must
    run in eval mode without gradients.

    Raises:
        AssertionError: with a hint naming the likely mistake.
    """
    import json

    from course_utils.serve import predict_response

    ex = "9.2"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = FashionCNN(width=8, hidden=32, dropout=0.5)
        inputs = [torch.randn(1, 1, 28, 28) * 2 for _ in range(3)]
    calls: list[tuple[bool, bool]] = []
    hook = model.register_forward_pre_hook(
        lambda m, args: calls.append((m.training, torch.is_grad_enabled()))
    )
    try:
        for i, (x, k) in enumerate(zip(inputs, (3, 1, 10), strict=True)):
            model.eval()
            expected = predict_response(model, x, k)
            model.train()
            calls.clear()
            try:
                result = fn(model, x, k)
            except NotImplementedError:
                raise
            except Exception as err:
                raise _failure(
                    ex,
                    f"make_response raised {type(err).__name__}: {err}",
                    "softmax the logits over dim 1, then .topk(top_k) gives values and indices.",
                ) from err
            if not calls:
                raise _failure(ex, "the model was never called", "run model(x).")
            if any(training for training, _ in calls):
                raise _failure(
                    ex,
                    "the model ran in training mode",
                    "call model.eval() first: dropout makes training-mode predictions random.",
                )
            if any(grad for _, grad in calls):
                raise _failure(
                    ex,
                    "the forward pass recorded gradients",
                    "wrap it in `with torch.inference_mode():`.",
                )
            try:
                json.dumps(result)
            except TypeError as err:
                raise _failure(
                    ex,
                    f"the response is not JSON-serialisable ({err})",
                    "jsonify cannot encode torch or NumPy numbers: use float(p) and int(i).",
                ) from err
            if not isinstance(result, dict) or list(result) != list(expected):
                keys = list(result) if isinstance(result, dict) else type(result).__name__
                raise _failure(
                    ex,
                    f"keys {keys}, expected {list(expected)}",
                    "return a dict with 'label', 'class_index' and 'probabilities', in that order.",
                )
            probs = result["probabilities"]
            if not isinstance(probs, list) or len(probs) != k:
                raise _failure(
                    ex,
                    f"top_k={k} but 'probabilities' has "
                    f"{len(probs) if isinstance(probs, list) else type(probs).__name__} entries",
                    "give exactly top_k entries, a list of dicts.",
                )
            if any(
                not isinstance(p, dict) or set(p) != {"label", "class_index", "probability"}
                for p in probs
            ):
                raise _failure(
                    ex,
                    "each entry of 'probabilities' must be {'label', 'class_index', 'probability'}",
                    "build one small dict per class.",
                )
            values = [p["probability"] for p in probs]
            if any(v < 0 or v > 1 for v in values):
                raise _failure(
                    ex,
                    f"'probabilities' holds {values[:3]}…, not values in [0, 1]",
                    "these look like logits: apply torch.softmax(logits, dim=1) first.",
                )
            if values != sorted(values, reverse=True):
                raise _failure(
                    ex, "'probabilities' is not sorted, largest first", "topk sorts for you."
                )
            same = result["class_index"] == expected["class_index"] and all(
                p["class_index"] == q["class_index"]
                and math.isclose(p["probability"], q["probability"], abs_tol=1e-5)
                for p, q in zip(probs, expected["probabilities"], strict=True)
            )
            if not same or result["label"] != expected["label"]:
                raise _failure(
                    ex,
                    f"input {i + 1}: got {result['label']!r} {values[:2]}…, expected "
                    f"{expected['label']!r} "
                    f"{[round(q['probability'], 4) for q in expected['probabilities'][:2]]}…",
                    "softmax over dim 1 (the classes), take the top k, and name each class with "
                    "CLASSES[index].",
                )
    finally:
        hook.remove()
    _passed(
        ex,
        "make_response runs the model in eval mode under inference_mode and returns a "
        "JSON-serialisable body matching the API's on 3 inputs (top_k = 3, 1, 10)",
    )
