"""Check of exercise 1.4: the training loop and the evaluation loop, written by the learner."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import FashionMNISTTensors, TensorLoader
from ..models import FashionCNN
from ..train import evaluate
from ._common import aliases, call, failure, passed, refuse

__all__ = ["N_STEPS", "check_loops"]


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
