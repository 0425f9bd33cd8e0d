"""Checks of the chapter 4 exercises: dropout: a ``Dropout`` module and a channel dropout written
from scratch, Monte-Carlo dropout, and an experiment on weight decay and the gap."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..data import FashionMNISTTensors, TensorLoader, load_tensors
from ..models import FashionCNN
from ..train import evaluate, fit, seed_everything
from ._common import (
    aliases,
    call,
    failure,
    passed,
    refuse,
    reported_runs_verdict,
    same_data,
)

__all__ = [
    "DROPOUT_SHORTCUTS",
    "EXPERIMENT_ARMS",
    "EXPERIMENT_VERDICTS",
    "TASK_EPOCHS",
    "TASK_WEIGHT_DECAY",
    "check_channel_dropout",
    "check_dropout_module",
    "check_mc_dropout",
    "check_weight_decay_experiment",
]

#: Every library route to dropout: switched off while the learner's dropout runs.
DROPOUT_SHORTCUTS: list[tuple[object, str]] = [
    *(
        (nn.functional, name)
        for name in (
            "dropout",
            "dropout1d",
            "dropout2d",
            "dropout3d",
            "alpha_dropout",
            "feature_alpha_dropout",
        )
    ),
    *(
        (nn, name)
        for name in (
            "Dropout",
            "Dropout1d",
            "Dropout2d",
            "Dropout3d",
            "AlphaDropout",
            "FeatureAlphaDropout",
        )
    ),
    *(
        (torch, name)
        for name in (
            "dropout",
            "dropout_",
            "native_dropout",
            "feature_dropout",
            "feature_dropout_",
            "alpha_dropout",
            "alpha_dropout_",
            "feature_alpha_dropout",
            "feature_alpha_dropout_",
        )
    ),
]


def _build(ex: str, cls: Callable[..., nn.Module], p: float) -> nn.Module:
    """``cls(p)``, which must be an ``nn.Module`` without parameters."""
    name = getattr(cls, "__name__", repr(cls))
    module = call(ex, f"{name}({p})", cls, p, hint="the constructor takes p; a valid p must work.")
    if not isinstance(module, nn.Module):
        raise failure(ex, f"{name}({p}) is not an nn.Module", "subclass nn.Module.")
    if list(module.parameters()):
        raise failure(
            ex, f"{name}({p}) has parameters", "dropout has nothing to learn: store p only."
        )
    return module


def _forward(ex: str, module: nn.Module, x: torch.Tensor, what: str, seed: int) -> torch.Tensor:
    """``module(x)`` under a fixed seed; ``x`` must be left unchanged and the shape kept."""
    original = x.detach().clone()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = call(ex, f"the forward pass ({what})", module, x, hint="read the error above.")
    if not torch.equal(x.detach(), original):
        raise failure(
            ex,
            f"{what}: the input x was modified",
            "build a new tensor (x * mask / (1 - p)); do not write into x.",
        )
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise failure(ex, f"{what}: output {got}, expected {tuple(x.shape)}", "return x's shape.")
    if out.dtype != x.dtype:
        raise failure(
            ex,
            f"{what}: output dtype {out.dtype}, expected x's {x.dtype}",
            "keep x's dtype: multiply x by the mask (a bool or float mask broadcasts) and by "
            "the scale 1 / (1 - p).",
        )
    return out


def _bad_p(ex: str, cls: Callable[..., nn.Module]) -> None:
    for bad in (-0.1, 1.5):
        try:
            cls(bad)
        except (NotImplementedError, AssertionError):
            raise
        except ValueError:
            continue
        except Exception as err:
            raise failure(
                ex, f"p={bad} raised {type(err).__name__}, not ValueError", "raise ValueError."
            ) from err
        raise failure(
            ex, f"p={bad} was accepted", "raise ValueError in __init__ unless 0 <= p <= 1."
        )


def _identity_cases(ex: str, cls: Callable[..., nn.Module], x: torch.Tensor) -> None:
    module = _build(ex, cls, 0.5)
    if not module.training:
        raise failure(ex, "a new module is in eval mode", "call super().__init__() first.")
    out = _forward(ex, module.eval(), x, "p=0.5 in eval mode", 0)
    if not torch.equal(out, x):
        raise failure(
            ex,
            "p=0.5 in eval mode: the output differs from x",
            "dropout does nothing in eval mode: read self.training (set by .train()/.eval()) "
            "and return x when it is False.",
        )
    if not torch.equal(_forward(ex, _build(ex, cls, 0.0).train(), x, "p=0 in training", 0), x):
        raise failure(ex, "p=0 changed x", "with p=0 nothing is dropped and the scale is 1.")


def _p_one(ex: str, cls: Callable[..., nn.Module], x: torch.Tensor) -> None:
    out = _forward(ex, _build(ex, cls, 1.0).train(), x, "p=1 in training", 0)
    if not torch.equal(out, torch.zeros_like(x)):
        raise failure(
            ex,
            "p=1 did not give zeros (1 / (1 - p) divides by zero)",
            "with p=1 every element is dropped: return torch.zeros_like(x).",
        )


def _scale_hint(value: float, p: float) -> str:
    if math.isclose(value, 1.0, rel_tol=1e-5):
        return "scale the survivors by 1 / (1 - p), so that the expected value is unchanged."
    if math.isclose(value, 1 - p, rel_tol=1e-5):
        return "divide by (1 - p), do not multiply."
    return "the survivors are x / (1 - p)."


def _expect_rate_and_scale(
    ex: str, what: str, dropped: float, survivors: torch.Tensor, p: float, rate_hint: str
) -> None:
    """On a tensor of ones: about p of the `what` zeroed, and the survivors 1 / (1 - p)."""
    if abs(dropped - p) > 0.01:
        raise failure(
            ex, f"p={p}: {dropped:.1%} of the {what} were zeroed, expected about {p:.0%}", rate_hint
        )
    if not torch.allclose(survivors, torch.full_like(survivors, 1 / (1 - p))):
        value = survivors[0].item() if len(survivors) else float("nan")
        raise failure(
            ex,
            f"p={p}: kept {what} of a tensor of ones are {value:.3f}, expected {1 / (1 - p):.3f}",
            _scale_hint(value, p),
        )


# --- 4.1 ---------------------------------------------------------------------------------------


def check_dropout_module(cls: Callable[[float], nn.Module]) -> None:
    """Exercise 4.1: ``Dropout(p)``, an ``nn.Module`` written from scratch.

    In training mode each element is zeroed with probability ``p`` and the survivors are scaled
    by ``1 / (1 - p)``, with a fresh mask every call and gradients flowing through the mask; in
    eval mode (``.eval()``) and for ``p = 0`` the output equals ``x``; ``p = 1`` gives zeros;
    ``p`` outside ``[0, 1]`` raises ``ValueError`` in the constructor; ``x`` is never modified;
    no parameters. Statistics are checked on 200,000 elements, with every library dropout
    switched off.

    Raises:
        AssertionError: with a hint.
    """
    ex = "4.1"
    shortcuts = DROPOUT_SHORTCUTS + aliases([cls], DROPOUT_SHORTCUTS)
    x = torch.rand(400, 500, generator=torch.Generator().manual_seed(0)) + 0.5
    with refuse(ex, shortcuts, task="dropout"):
        _identity_cases(ex, cls, x)
        ones = torch.ones_like(x)
        for p in (0.3, 0.5):
            out = _forward(ex, _build(ex, cls, p).train(), ones, f"p={p} in training", 1)
            dropped = (out == 0).float().mean().item()
            kept = out[out != 0]
            if abs(dropped - (1 - p)) < 0.02 and abs(dropped - p) > 0.02:
                raise failure(
                    ex,
                    f"p={p}: {dropped:.1%} of the elements were zeroed",
                    "p is the probability to *drop*: keep an element when rand >= p.",
                )
            _expect_rate_and_scale(
                ex,
                "elements",
                dropped,
                kept,
                p,
                "zero each element independently with probability p: "
                "mask = torch.rand_like(x) >= p.",
            )
            same_rows, same_columns = (
                bool((out == out[:1]).all()),
                bool((out == out[:, :1]).all()),
            )
            if same_rows or same_columns:
                raise failure(
                    ex,
                    f"p={p}: on a [400, 500] tensor of ones every "
                    + ("row got the same mask" if same_rows else "row was kept or dropped whole"),
                    "draw one decision per element, a mask of x's own shape: "
                    "torch.rand_like(x) >= p (not torch.rand(x.shape[-1]) or one per row).",
                )
        module = _build(ex, cls, 0.5).train()
        leaf = x.clone().requires_grad_(True)
        out = _forward(ex, module, leaf, "p=0.5 with requires_grad", 2)
        mask = out.detach() != 0
        if not torch.allclose(out.detach()[mask], x[mask] / 0.5):
            raise failure(ex, "kept elements are not x / (1 - p)", "multiply x by the mask.")
        grad_hint = (
            "compute x * mask / (1 - p) with tensor operations, without .detach() or .data, "
            "so that autograd sends the gradient through the kept elements."
        )
        call(ex, "out.sum().backward()", out.sum().backward, hint=grad_hint)
        if leaf.grad is None or not torch.allclose(leaf.grad, mask.float() / 0.5):
            raise failure(ex, "the gradient with respect to x is not mask / (1 - p)", grad_hint)
        a = _forward(ex, module, x, "p=0.5, call 1", 3)
        b = _forward(ex, module, x, "p=0.5, call 2", 4)
        if torch.equal(a, b):
            raise failure(ex, "two calls gave the same mask", "draw a fresh mask every call.")
        _p_one(ex, cls, x)
        _bad_p(ex, cls)
    passed(
        ex,
        "eval mode and p=0 return x; p=0.3/0.5 drop that share and scale survivors by "
        "1/(1-p); gradients flow through the mask; p=1 gives zeros; bad p raises ValueError; "
        "no library dropout used",
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
    call(ex, "enable_mc_dropout(model)", fn, model, hint="read the error above.")
    drops = {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.dropout._DropoutNd)}
    norms = {
        n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }
    off = [n for n, m in drops.items() if not m.training]
    if off:
        raise failure(
            ex,
            f"dropout layers {off} are in eval mode",
            "after model.eval(), call .train() on every module that is an instance of "
            "nn.Dropout or nn.Dropout2d (both subclass nn.modules.dropout._DropoutNd).",
        )
    training_norms = [n for n, m in norms.items() if m.training]
    if training_norms:
        raise failure(
            ex,
            f"BatchNorm layers {training_norms} are in training mode",
            "start from model.eval(): in training mode BatchNorm normalises with the batch's "
            "statistics and overwrites its running statistics.",
        )
    others = [
        n or "the model itself"
        for n, m in model.named_modules()
        if m.training and n not in drops and n not in norms
    ]
    if others:
        raise failure(
            ex,
            f"{len(others)} module(s) other than dropout are still in training mode: {others[:4]}",
            "put the whole model in eval mode first, model.eval(), then switch only the "
            "dropout layers back with .train(): any layer that behaves differently in "
            "training (not only BatchNorm) must be in eval mode.",
        )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        a, b = model(x), model(x)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    if changed:
        raise failure(ex, f"a forward pass changed {changed}", "BatchNorm must be in eval mode.")
    if torch.equal(a, b):
        raise failure(
            ex, "two forward passes gave identical outputs", "the dropout layers must be active."
        )
    passed(
        ex,
        f"{len(norms)} BatchNorm layers in eval mode (running statistics untouched), "
        f"{len(drops)} dropout layers active, outputs vary between passes",
    )


# --- 4.3 ---------------------------------------------------------------------------------------


def check_channel_dropout(cls: Callable[[float], nn.Module]) -> None:
    """Exercise 4.3: ``ChannelDropout(p)``, ``nn.Dropout2d`` written from scratch.

    On ``[N, C, H, W]`` input, training mode zeroes each *channel of each image* with
    probability ``p`` (all its ``H × W`` values together) and scales the survivors by
    ``1 / (1 - p)``; eval mode and ``p = 0`` return ``x``; ``p = 1`` gives zeros; a bad ``p``
    raises ``ValueError``; an input that is not 4-d raises ``ValueError``; ``x`` is never
    modified. Checked on 100,000 channel draws, with every library dropout switched off.

    Raises:
        AssertionError: with a hint.
    """
    ex = "4.3"
    shortcuts = DROPOUT_SHORTCUTS + aliases([cls], DROPOUT_SHORTCUTS)
    x = torch.rand(200, 500, 2, 2, generator=torch.Generator().manual_seed(0)) + 0.5
    with refuse(ex, shortcuts, task="channel dropout"):
        _identity_cases(ex, cls, x)
        p = 0.4
        out = _forward(ex, _build(ex, cls, p).train(), torch.ones_like(x), f"p={p}", 1)
        flat = out.flatten(2)  # [N, C, H*W]
        if not bool((flat == flat[..., :1]).all()):
            raise failure(
                ex,
                "some channels are only partly zeroed",
                "draw one keep/drop decision per (image, channel): a mask of shape "
                "[N, C, 1, 1], which broadcasts over H and W.",
            )
        kept = flat[..., 0]  # [N, C]
        if bool((kept == kept[:1]).all()) or bool((kept == kept[:, :1]).all()):
            raise failure(
                ex,
                "every image got the same mask, or every channel of an image the same draw",
                "one draw per image *and* channel: torch.rand(N, C, 1, 1) >= p.",
            )
        dropped_share = (kept == 0).float().mean().item()
        _expect_rate_and_scale(
            ex,
            "channels",
            dropped_share,
            kept[kept != 0],
            p,
            "drop each channel with probability p: keep it when rand >= p.",
        )
        module = _build(ex, cls, 0.5).train()
        a = _forward(ex, module, x, "p=0.5, call 1", 3)
        if not torch.allclose(a[a != 0], (x / 0.5)[a != 0]):
            raise failure(ex, "kept values are not x / (1 - p)", "multiply x by the mask.")
        if torch.equal(a, _forward(ex, module, x, "p=0.5, call 2", 4)):
            raise failure(ex, "two calls gave the same mask", "draw a fresh mask every call.")
        _p_one(ex, cls, x)
        _bad_p(ex, cls)
        for shape in ((8, 5), (8, 5, 3, 3, 3)):
            try:
                _build(ex, cls, 0.5).train()(torch.ones(shape))
            except (NotImplementedError, AssertionError):
                raise
            except ValueError:
                continue
            except Exception as err:
                raise failure(
                    ex,
                    f"a {len(shape)}-d input raised {type(err).__name__}, not ValueError",
                    "check x.dim() == 4 first and raise ValueError with a clear message.",
                ) from err
            raise failure(
                ex,
                f"a {len(shape)}-d input {shape} was accepted",
                "channel dropout is for [N, C, H, W] maps: raise ValueError otherwise.",
            )
    passed(
        ex,
        "eval mode and p=0 return x; p=0.4 drops that share of whole channels, per image, "
        "and scales survivors by 1/(1-p); p=1 gives zeros; bad p and non-4-d input raise "
        "ValueError; no library dropout used",
    )


# --- 4.4 ---------------------------------------------------------------------------------------

EXPERIMENT_ARMS = ("plain", "weight_decay")
EXPERIMENT_VERDICTS = (
    "weight decay narrows the gap",
    "weight decay widens the gap",
    "within noise",
)

#: Task 4.4's protocol, pinned here (``WEIGHT_DECAY`` and ``GAP_EPOCHS`` in the notebook are
#: the learner's to edit): Adam at 1e-3, weight decay 1e-2 in the second arm, 8 epochs on
#: ``gap_train`` in shuffled batches of 64.
TASK_WEIGHT_DECAY = 1e-2
TASK_EPOCHS = 8
_PROTOCOL = (
    "the task's protocol (train_one(weight_decay, seed): FashionCNN, Adam(lr=1e-3, "
    "weight_decay), GAP_EPOCHS = 8 epochs on gap_train), then evaluate's accuracy on gap_train "
    "minus that on val_small, both in eval mode"
)


def _task_data() -> tuple[FashionMNISTTensors, FashionMNISTTensors]:
    """Task 4.4's ``gap_train`` (1,000 images) and ``val_small`` (1,000), as the setup cell of
    the chapter 4 exercises builds them."""
    splits = load_tensors()
    return splits["train"].random_subset(1000, seed=0), splits["val"].random_subset(1000, seed=0)


def _rerun_gap(
    weight_decay: float,
    seed: int,
    train_data: FashionMNISTTensors,
    val_data: FashionMNISTTensors,
    epochs: int,
    device: str | torch.device,
) -> float:
    """The task's protocol for one run: train accuracy (eval mode) minus validation accuracy."""
    return _rerun_accuracies(weight_decay, seed, train_data, val_data, epochs, device)["gap"]


def _rerun_accuracies(
    weight_decay: float,
    seed: int,
    train_data: FashionMNISTTensors,
    val_data: FashionMNISTTensors,
    epochs: int,
    device: str | torch.device,
) -> dict[str, float]:
    """One run by the task's protocol: its gap, and what the recognised mistakes would report
    (the opposite sign; the training accuracy measured on the fly, in training mode)."""
    with torch.random.fork_rng(devices=[]):
        seed_everything(seed)
        model = FashionCNN().to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=weight_decay)
        batches = TensorLoader(train_data, 64, shuffle=True, seed=seed, device=device)
        history = fit(model, batches, None, epochs, optimizer, progress=False)
    train_acc = evaluate(model, TensorLoader(train_data, 500, device=device))[1]
    val_acc = evaluate(model, TensorLoader(val_data, 500, device=device))[1]
    return {
        "gap": train_acc - val_acc,
        "sign": val_acc - train_acc,
        "on the fly": history.train_acc[-1] - val_acc,
        "train": train_acc,
        "val": val_acc,
    }


_GAP_MISTAKES = {  # what the check recomputes: the mistake it names
    "sign": "your gap has the opposite sign: the gap is training accuracy − validation accuracy "
    "(positive when the model does better on the images it trained on).",
    "on the fly": "your gap matches fit's training accuracy (measured on the fly, in training "
    "mode, while the weights change); measure it after training with evaluate on a TensorLoader "
    "of gap_train, in eval mode, as the validation accuracy is measured.",
    "train": "your number is the training accuracy alone: the gap is training accuracy − "
    "validation accuracy.",
    "val": "your number is the validation accuracy alone: the gap is training accuracy − "
    "validation accuracy.",
}


def check_weight_decay_experiment(
    gaps: Mapping[str, Mapping[int, float]],
    verdict: str,
    train_data: FashionMNISTTensors,
    val_data: FashionMNISTTensors,
    weight_decay: float,
    epochs: int,
    device: str | torch.device = "cpu",
) -> None:
    """Exercise 4.4: does weight decay narrow the train–validation gap?

    ``gaps`` is ``{"plain": {seed: gap}, "weight_decay": {seed: gap}}`` (2 seeds or more, the
    same for both): training accuracy (eval mode) minus validation accuracy of each run, trained
    by the task's protocol (weight decay 0 for ``"plain"``, :data:`TASK_WEIGHT_DECAY` for the
    other arm, :data:`TASK_EPOCHS` epochs). ``weight_decay``, ``epochs``, ``train_data`` and
    ``val_data`` must be the task's (``WEIGHT_DECAY``, ``GAP_EPOCHS``, ``gap_train``,
    ``val_small``); the check trains on its own copy of the task's data. ``verdict`` is one of
    ``EXPERIMENT_VERDICTS``, as the noise rule decides. One run, chosen at random by the check
    (a run takes about 5 s), is retrained and its gap must agree within 0.01; a gap that differs
    is first compared with the recognised mistakes (the sign, the on-the-fly training accuracy).

    Raises:
        AssertionError: with a hint.
    """
    ex = "4.4"
    for name, given, task, what in (
        ("weight_decay", weight_decay, TASK_WEIGHT_DECAY, "WEIGHT_DECAY = 1e-2"),
        ("epochs", epochs, TASK_EPOCHS, "GAP_EPOCHS = 8"),
    ):
        if (
            isinstance(given, bool)
            or not isinstance(given, int | float)
            or not math.isclose(given, task)
        ):
            raise failure(
                ex,
                f"{name}={given!r}, but the task's is {task:g}",
                f"keep the setup cell's {what}, train every run with it and pass it as {name}.",
            )
    train, val = _task_data()
    for name, given, task, source in (
        ("train_data", train_data, train, "gap_train, splits['train'].random_subset(1000, seed=0)"),
        ("val_data", val_data, val, "val_small, splits['val'].random_subset(1000, seed=0)"),
    ):
        if not same_data(given, task):
            n = len(getattr(given, "labels", ()))
            raise failure(
                ex,
                f"{name} ({n:,} images) is not the task's {source.split(',')[0]} "
                f"({len(task):,} images)",
                f"measure every gap on the task's data and pass it as {name}: {source}, as the "
                "setup cell makes it.",
            )
    on = torch.device(device)
    decay = {"plain": 0.0, "weight_decay": TASK_WEIGHT_DECAY}
    details: dict[tuple[str, int], dict[str, float]] = {}

    def recompute(arm: str, seed: int) -> float:
        details[arm, seed] = _rerun_accuracies(decay[arm], seed, train, val, TASK_EPOCHS, on)
        return details[arm, seed]["gap"]

    def explain(
        reported: Mapping[tuple[str, int], float], again: Mapping[tuple[str, int], float]
    ) -> str | None:
        wrong = [r for r in again if not abs(again[r] - reported[r]) <= 0.01]
        for mistake, hint in _GAP_MISTAKES.items():
            if all(abs(details[r][mistake] - reported[r]) <= 1e-3 for r in wrong):
                return hint
        return None

    reported_runs_verdict(
        ex,
        gaps,
        verdict,
        arms=EXPERIMENT_ARMS,
        verdicts=EXPERIMENT_VERDICTS,
        recompute=recompute,
        tolerance=0.01,
        what="gap",
        value_range=(-1.0, 1.0),
        range_hint="a gap is a difference of two accuracies, each a fraction between 0 and 1 as "
        "evaluate(...)[1] returns it: report train_acc - val_acc, not percentage points.",
        rerun="one",
        explain=explain,
        protocol=_PROTOCOL,
    )
    passed(
        ex,
        "the gaps come from real runs (a rerun of one of them agrees), and the verdict "
        "follows the noise rule",
    )
