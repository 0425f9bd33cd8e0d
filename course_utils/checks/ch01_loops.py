"""Check of exercise 1.4: the training loop and the evaluation loop, written by the learner."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import FashionMNISTTensors, TensorLoader
from ..train import evaluate, fit, predict
from ._common import aliases, call, failure, passed, raise_first, refuse, seeded_cnn

__all__ = ["N_STEPS", "check_loops"]

N_STEPS, _LR = 5, 1e-2
_TRAIN_BATCHES = (8, 8, 4)  # three batches: N_STEPS = 5 needs a second pass over them
_EVAL_BATCHES = (16, 16, 4)  # an uneven last batch: the mean of per-batch accuracies is wrong
_SUMS = "add loss.item() * len(y) and the hits per batch, then divide once by the sample count."


def _tiny_model(calls: list[tuple]) -> nn.Module:
    """A CNN with BatchNorm and dropout (seed 0); each forward pass appends ``(training, grad
    enabled, batch size)`` to ``calls``."""
    model = seeded_cnn(0, width=4, hidden=16, norm="batch", dropout=0.5, conv_dropout=0.3)
    model.register_forward_pre_hook(
        lambda m, args: calls.append((m.training, torch.is_grad_enabled(), len(args[0])))
    )
    return model


def _run(ex: str, fn: Callable[..., Any], task: str, *args: Any) -> Any:
    """``fn(*args)`` with the package's loops (and the learner's aliases of them) switched off."""
    from .. import train

    shortcuts = [(train, name) for name in ("fit", "evaluate", "predict", "eval_mode")]
    with refuse(ex, shortcuts + aliases([fn], shortcuts), task=task):
        what = f"{getattr(fn, '__name__', 'your function')}(...)"
        return call(ex, what, fn, *args, hint="read the error above; batches are (x, y) pairs.")


def _fit_losses(batches: list, zero_grad: bool = True) -> list[float]:
    """The step losses of the package's ``fit`` (``zero_grad=False``: a typical slip)."""
    model = _tiny_model([])
    optimizer = torch.optim.Adam(model.parameters(), lr=_LR)
    if not zero_grad:
        optimizer.zero_grad = lambda **_: None  # the gradients of all steps add up
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the same dropout masks as the learner's run
        steps = list(itertools.islice(itertools.cycle(batches), N_STEPS))
        return fit(model, steps, None, 1, optimizer, progress=False).step_loss


def _check_train_steps(ex: str, train_steps: Callable[..., Any]) -> str:
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(n, 1, 28, 28, generator=gen) for n in _TRAIN_BATCHES]
    batches = [(x, torch.randint(0, 10, (len(x),), generator=gen)) for x in xs]
    calls: list[tuple] = []
    model = _tiny_model(calls).eval()  # the loop must switch to train mode itself
    args = (model, batches, torch.optim.Adam(model.parameters(), lr=_LR), nn.CrossEntropyLoss())
    with torch.random.fork_rng():
        torch.manual_seed(0)
        got = _run(ex, train_steps, "the training loop", *args, N_STEPS)
    case = f"{N_STEPS} steps over {len(batches)} batches of {'+'.join(map(str, _TRAIN_BATCHES))}"
    sizes, wanted = [c[2] for c in calls], [len(xs[s % len(xs)]) for s in range(N_STEPS)]
    raise_first(
        ex,
        (not all(c[0] for c in calls), "train_steps ran the model in eval mode (it was handed "
         "over in eval mode)", "call model.train() at the start: dropout and BatchNorm behave "
         "differently when training."),
        (sizes != wanted, f"the model saw batches of {sizes} ({case}), expected {wanted}", "run "
         "exactly n_steps optimizer steps, one batch per step, cycling (itertools.cycle)."),
        (not isinstance(got, list) or len(got) != N_STEPS or any(type(v) is not float
         for v in got), f"train_steps returned {got!r:.80}, not a list of {N_STEPS} floats",
         "append loss.item() once per step."),
    )  # fmt: skip
    expected = _fit_losses(batches)
    slip = np.allclose(got, _fit_losses(batches, zero_grad=False), rtol=0, atol=1e-5)
    shown = [", ".join(f"{v:.4f}" for v in vs) for vs in (got, expected)]
    raise_first(
        ex,
        (not np.allclose(got, expected, rtol=0, atol=1e-5), f"losses [{shown[0]}] differ from "
         f"the reference run's [{shown[1]}] ({case})", "call optimizer.zero_grad() before each "
         "backward(): without it the gradients add up." if slip else "per step: zero_grad() → "
         "loss = loss_fn(model(x), y) → loss.backward() → optimizer.step(); record loss.item()."),
        (not model.training, "the model was left in eval mode after training",
         "leave it in train mode."),
    )  # fmt: skip
    return case


def _check_evaluate(ex: str, evaluate_model: Callable[..., Any]) -> None:
    calls: list[tuple] = []
    model, n, gen = _tiny_model(calls), sum(_EVAL_BATCHES), torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=gen)
    # Labels from the eval-mode predictions (same batches, so the same floats decide argmax):
    # batches 1 and 2 half right, the short last one all right: 20/36, but 0.667 as a batch mean.
    unlabelled = FashionMNISTTensors(images, torch.zeros(n, dtype=torch.long))
    preds = predict(model, TensorLoader(unlabelled, _EVAL_BATCHES[0]))[0]
    labels = torch.where(torch.arange(n) % 16 < 8, preds, (preds + 1) % 10)
    loader = TensorLoader(FashionMNISTTensors(images, labels), _EVAL_BATCHES[0])
    (loss, acc), per_batch = evaluate(model, loader), [evaluate(model, [b]) for b in loader]
    for mode in (True, False):
        calls.clear()
        args = (model.train(mode), loader, nn.CrossEntropyLoss())
        got = _run(ex, evaluate_model, "the evaluation loop", *args)
        before, after = ("train" if m else "eval" for m in (mode, model.training))
        seen = sum(c[2] for c in calls)
        raise_first(
            ex,
            (any(c[0] for c in calls), "evaluate_model ran the model in training mode (handed "
             f"over in {before} mode)", "call model.eval() before the loop."),
            (any(c[1] for c in calls), "evaluate_model built a gradient graph", "wrap the loop "
             "in `with torch.no_grad():` (or torch.inference_mode())."),
            (model.training != mode, f"the model came in {before} mode and left in {after} mode",
             "call model.train(was_training) at the end, in a `finally:`."),
            (seen != n, f"the model saw {seen} images, not the loader's {n}",
             "loop once over every batch, the short last one too."),
            (not isinstance(got, tuple | list) or len(got) != 2 or any(type(v) is not float
             for v in got), f"evaluate_model returned {got!r:.60}, not (loss, accuracy)",
             "return (total_loss / seen, correct / seen) as floats (.item())."),
        )  # fmt: skip
    loss_mean, acc_mean = np.mean(per_batch, axis=0)
    slips = {  # the (loss, accuracy) a typical slip gives: its hint
        (loss_mean, acc): "the mean of the per-batch losses weighs the short last batch wrongly",
        (loss, acc_mean): "you averaged the per-batch accuracies, but the last batch is shorter",
        (loss, 100 * acc): "return a fraction between 0 and 1, not a percentage",
    }
    if not np.allclose(got, (loss, acc), rtol=1e-5, atol=0):
        hint = next((h + ": " for v, h in slips.items() if np.allclose(got, v, rtol=1e-5)), "")
        case = f"batches of {'+'.join(map(str, _EVAL_BATCHES))}, {acc * n:.0f}/{n} right"
        shown = f"({got[0]:.4f}, {got[1]:.4f}), expected ({loss:.4f}, {acc:.4f}) ({case})"
        raise failure(ex, f"(loss, accuracy) = {shown}", hint + _SUMS)


def check_loops(train_steps: Callable[..., Any], evaluate_model: Callable[..., Any]) -> None:
    """Exercise 1.4: ``train_steps(model, batches, optimizer, loss_fn, n_steps) -> [loss per step]``
    matches a seeded run of ``fit``; ``evaluate_model(model, batches, loss_fn) -> (loss, accuracy)``
    matches ``evaluate`` (both switched off meanwhile), in eval mode, restoring the model's mode."""
    ex = "1.4"
    case = _check_train_steps(ex, train_steps)
    _check_evaluate(ex, evaluate_model)
    passed(
        ex,
        f"train_steps matches a seeded reference run ({case}) and leaves the model in train "
        "mode; evaluate_model runs in eval mode without gradients, matches "
        "course_utils.train.evaluate on an uneven last batch, and restores the model's mode",
    )
