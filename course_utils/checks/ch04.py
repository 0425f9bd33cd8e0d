"""Checks of the chapter 4 exercises: dropout: a ``Dropout`` module and a channel dropout written
from scratch, Monte-Carlo dropout, and an experiment on weight decay and the gap."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..data import FashionMNISTTensors, TensorLoader, load_tensors
from ..models import FashionCNN
from ..train import evaluate, fit, seed_everything
from ._common import (
    aliases,
    call,
    failure,
    passed,
    raise_first,
    refuse,
    reported_runs_verdict,
    same_data,
)

__all__ = ["check_channel_dropout", "check_dropout_module", "check_mc_dropout"]
__all__ += ["check_weight_decay_experiment", "DROPOUT_SHORTCUTS", "EXPERIMENT_ARMS"]
__all__ += ["EXPERIMENT_VERDICTS", "TASK_EPOCHS", "TASK_WEIGHT_DECAY"]

_DROPOUTS = "dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout"
_MODULES = "Dropout Dropout1d Dropout2d Dropout3d AlphaDropout FeatureAlphaDropout"
_TORCH = "dropout native_dropout feature_dropout alpha_dropout feature_alpha_dropout"
#: Every library route to dropout, switched off while the learner's dropout runs.
DROPOUT_SHORTCUTS: list[tuple[object, str]] = [
    *((F, name) for name in _DROPOUTS.split()),
    *((nn, name) for name in _MODULES.split()),
    *((torch, name) for name in _TORCH.split()),
    *((torch, name + "_") for name in _TORCH.split() if name != "native_dropout"),
]


def _build(ex: str, cls: Callable[..., nn.Module], p: float) -> nn.Module:
    """``cls(p)``: a new ``nn.Module`` in training mode, without parameters."""
    name = getattr(cls, "__name__", repr(cls))
    module = call(ex, f"{name}({p})", cls, p, hint="the constructor takes p; a valid p must work.")
    if not isinstance(module, nn.Module) or getattr(module, "training", None) is not True:
        raise failure(ex, f"{name}({p}) is not a new nn.Module", "call super().__init__() first.")
    raise_first(ex, (list(module.parameters()), f"{name}({p}) has parameters", "store p only."))
    return module


def _forward(ex: str, module: nn.Module, x: torch.Tensor, what: str, seed: int) -> torch.Tensor:
    """``module(x)`` under a fixed seed: ``x`` unchanged, the output of its shape and dtype."""
    original = x.detach().clone()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = call(ex, f"the forward pass ({what})", module, x, hint="read the error above.")
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    dtype = getattr(out, "dtype", None)
    raise_first(ex,
        (not torch.equal(x.detach(), original), f"{what}: the input x was modified",
         "build a new tensor (x * mask / (1 - p)); do not write into x."),
        (shape != x.shape, f"{what}: output {shape}, expected {tuple(x.shape)}", "keep x's shape."),
        (dtype != x.dtype, f"{what}: output dtype {dtype}, expected x's {x.dtype}",
         "keep x's dtype: multiply x by the mask and by the scale 1 / (1 - p)."),
    )  # fmt: skip
    return out


def _identity(ex: str, cls: Callable[..., nn.Module], x: torch.Tensor) -> None:
    """In eval mode, and with p=0, the output is ``x``."""
    for p, training, what in ((0.5, False, "p=0.5 in eval mode"), (0.0, True, "p=0 in training")):
        if not torch.equal(_forward(ex, _build(ex, cls, p).train(training), x, what, 0), x):
            hint = "dropout returns x in eval mode (self.training is False) and with p=0."
            raise failure(ex, f"{what}: the output differs from x", hint)


def _rate_and_scale(ex: str, what: str, out: torch.Tensor, p: float, hint: str) -> None:
    """``out``, dropout of ones: about ``p`` of the ``what`` zeroed, the others 1 / (1 - p)."""
    dropped, kept = (out == 0).float().mean().item(), out[out != 0]
    if abs(dropped - p) > 0.01:
        if abs(dropped - (1 - p)) < 0.02:
            hint = "p is the probability to *drop*: keep an element when rand >= p."
        raise failure(ex, f"p={p}: {dropped:.1%} of the {what} were zeroed, not {p:.0%}", hint)
    if not torch.allclose(kept, torch.full_like(kept, 1 / (1 - p))):
        value = kept[0].item()
        hint = "scale the survivors by 1 / (1 - p), so that the expected value is unchanged."
        if math.isclose(value, 1 - p, rel_tol=1e-5):
            hint = "divide by (1 - p), do not multiply."
        elif not math.isclose(value, 1.0, rel_tol=1e-5):
            hint = "the survivors are x / (1 - p)."
        raise failure(
            ex, f"p={p}: kept {what} of ones are {value:.3f}, not {1 / (1 - p):.3f}", hint
        )


def _fresh_masks(ex: str, module: nn.Module, x: torch.Tensor) -> None:
    """At p=0.5: kept values are x / (1 - p), and two calls draw two masks."""
    a, b = (_forward(ex, module, x, f"p=0.5, call {i}", 2 + i) for i in (1, 2))
    kept = a != 0
    raise_first(ex,
        (not torch.allclose(a[kept], x[kept] / 0.5), "kept values are not x / (1 - p)",
         "multiply x by the mask and by 1 / (1 - p)."),
        (torch.equal(a, b), "two calls gave the same mask", "draw a fresh mask every call."),
    )  # fmt: skip


def _value_error(ex: str, make: Callable[[], Any], what: str, hint: str) -> None:
    """``make()`` must raise ``ValueError``."""
    try:
        make()
    except (NotImplementedError, AssertionError):
        raise
    except ValueError:
        return
    except Exception as err:
        raise failure(ex, f"{what} raised {type(err).__name__}, not ValueError", hint) from err
    raise failure(ex, f"{what} was accepted", hint)


def _edges(ex: str, cls: Callable[..., nn.Module], x: torch.Tensor) -> None:
    """p=1 gives zeros; p outside [0, 1] raises ValueError."""
    out = _forward(ex, _build(ex, cls, 1.0).train(), x, "p=1 in training", 0)
    problem, hint = "p=1 did not give zeros", "with p=1 every element is dropped: return zeros."
    raise_first(ex, (not torch.equal(out, torch.zeros_like(x)), problem, hint))
    for bad in (-0.1, 1.5):
        _value_error(ex, lambda p=bad: cls(p), f"p={bad}", "raise ValueError unless 0 <= p <= 1.")


# --- 4.1 ---------------------------------------------------------------------------------------


def check_dropout_module(cls: Callable[[float], nn.Module]) -> None:
    """Exercise 4.1: ``Dropout(p)`` from scratch: statistics on 200,000 elements, eval mode,
    gradients, edge cases; every library dropout is switched off while it runs."""
    ex, x = "4.1", torch.rand(400, 500, generator=torch.Generator().manual_seed(0)) + 0.5
    with refuse(ex, DROPOUT_SHORTCUTS + aliases([cls], DROPOUT_SHORTCUTS), task="dropout"):
        _identity(ex, cls, x)
        for p in (0.3, 0.5):
            out = _forward(
                ex, _build(ex, cls, p).train(), torch.ones_like(x), f"p={p} in training", 1
            )
            hint = "zero each element independently with probability p: torch.rand_like(x) >= p."
            _rate_and_scale(ex, "elements", out, p, hint)
            rows, columns = bool((out == out[:1]).all()), bool((out == out[:, :1]).all())
            shared = "row got the same mask" if rows else "row was kept or dropped whole"
            problem = f"p={p}: on a [400, 500] tensor of ones every {shared}"
            hint = "draw one decision per element, a mask of x's shape: torch.rand_like(x) >= p."
            raise_first(ex, (rows or columns, problem, hint))
        module, leaf = _build(ex, cls, 0.5).train(), x.clone().requires_grad_(True)
        out = _forward(ex, module, leaf, "p=0.5 with requires_grad", 2)
        hint = "compute x * mask / (1 - p) with tensor operations, without .detach() or .data."
        call(ex, "out.sum().backward()", out.sum().backward, hint=hint)
        grad_ok = leaf.grad is not None and torch.allclose(leaf.grad, (out.detach() != 0) / 0.5)
        raise_first(ex, (not grad_ok, "the gradient with respect to x is not mask / (1 - p)", hint))
        _fresh_masks(ex, module, x)
        _edges(ex, cls, x)
    passed(
        ex,
        "eval mode and p=0 return x; p=0.3/0.5 drop that share and scale survivors by "
        "1/(1-p); gradients flow through the mask; p=1 gives zeros; bad p raises ValueError; "
        "no library dropout used",
    )


# --- 4.2 ---------------------------------------------------------------------------------------


def check_mc_dropout(fn: Callable[[nn.Module], Any]) -> None:
    """Exercise 4.2: ``enable_mc_dropout(model)``: eval mode everywhere except the dropout
    layers, on a FashionCNN with BatchNorm, dropout and channel dropout."""
    ex = "4.2"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = FashionCNN(width=4, hidden=16, norm="batch", dropout=0.5, conv_dropout=0.2)
    call(ex, "enable_mc_dropout(model)", fn, model, hint="read the error above.")
    modules = dict(model.named_modules())
    drops = [n for n, m in modules.items() if isinstance(m, nn.modules.dropout._DropoutNd)]
    norms = [n for n, m in modules.items() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    off = [n for n in drops if not modules[n].training]
    on = [n for n in norms if modules[n].training]
    others = [n or "the model" for n, m in modules.items() if m.training and n not in drops + norms]
    raise_first(ex,
        (off, f"dropout layers {off} are in eval mode", "after model.eval(), call .train() on "
         "every nn.Dropout or nn.Dropout2d (both subclass nn.modules.dropout._DropoutNd)."),
        (on, f"BatchNorm layers {on} are in training mode", "start from model.eval(): in "
         "training mode BatchNorm overwrites its running statistics."),
        (others, f"{len(others)} other module(s) are in training mode: {others[:4]}", "put the "
         "whole model in eval mode first, then switch only the dropout layers back on."),
    )  # fmt: skip
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        a, b = model(x), model(x)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    raise_first(ex,
        (changed, f"a forward pass changed {changed}", "BatchNorm must be in eval mode."),
        (torch.equal(a, b), "two passes gave the same outputs", "dropout must be active."),
    )  # fmt: skip
    passed(
        ex,
        f"{len(norms)} BatchNorm layers in eval mode (running statistics untouched), "
        f"{len(drops)} dropout layers active, outputs vary between passes",
    )


# --- 4.3 ---------------------------------------------------------------------------------------


def check_channel_dropout(cls: Callable[[float], nn.Module]) -> None:
    """Exercise 4.3: ``ChannelDropout(p)``, ``nn.Dropout2d`` from scratch: 100,000 channel
    draws, whole channels per image, edge cases; every library dropout is switched off."""
    ex, p = "4.3", 0.4
    x = torch.rand(200, 500, 2, 2, generator=torch.Generator().manual_seed(0)) + 0.5
    with refuse(ex, DROPOUT_SHORTCUTS + aliases([cls], DROPOUT_SHORTCUTS), task="channel dropout"):
        _identity(ex, cls, x)
        flat = _forward(ex, _build(ex, cls, p).train(), torch.ones_like(x), f"p={p}", 1).flatten(2)
        kept = flat[..., 0]  # [N, C]: one value per channel when whole channels are dropped
        shared = bool((kept == kept[:1]).all()) or bool((kept == kept[:, :1]).all())
        raise_first(ex,
            (not bool((flat == flat[..., :1]).all()), "some channels are only partly zeroed",
             "draw one decision per (image, channel): a mask of shape [N, C, 1, 1]."),
            (shared, "every image got the same mask, or every channel of an image the same draw",
             "one draw per image *and* channel: torch.rand(N, C, 1, 1) >= p."),
        )  # fmt: skip
        _rate_and_scale(ex, "channels", kept, p, "drop each channel with probability p.")
        _fresh_masks(ex, _build(ex, cls, 0.5).train(), x)
        _edges(ex, cls, x)
        for shape in ((8, 5), (8, 5, 3, 3, 3)):
            hint = "channel dropout is for [N, C, H, W] maps: raise ValueError otherwise."
            module = _build(ex, cls, 0.5).train()
            _value_error(ex, partial(module, torch.ones(shape)), f"a {len(shape)}-d input", hint)
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
#: Task 4.4's protocol: Adam at 1e-3, weight decay 1e-2 in the second arm, 8 epochs on gap_train.
TASK_WEIGHT_DECAY, TASK_EPOCHS = 1e-2, 8
_PROTOCOL = "train_one(weight_decay, seed), then evaluate on gap_train minus on val_small"


def _task_data() -> tuple[FashionMNISTTensors, FashionMNISTTensors]:
    """Task 4.4's ``gap_train`` (1,000 images) and ``val_small`` (1,000)."""
    splits = load_tensors()
    return splits["train"].random_subset(1000, seed=0), splits["val"].random_subset(1000, seed=0)


def _rerun_accuracies(weight_decay, seed, train_data, val_data, epochs, device) -> dict:
    """One run of the task's protocol: its gap, and what the mistakes of :data:`_MISTAKES`
    would report."""
    with torch.random.fork_rng(devices=[]):
        seed_everything(seed)
        model = FashionCNN().to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=weight_decay)
        batches = TensorLoader(train_data, 64, shuffle=True, seed=seed, device=device)
        history = fit(model, batches, None, epochs, optimizer, progress=False)
    train, val = (
        evaluate(model, TensorLoader(d, 500, device=device))[1] for d in (train_data, val_data)
    )
    gaps = {"gap": train - val, "sign": val - train, "on the fly": history.train_acc[-1] - val}
    return {**gaps, "train": train, "val": val}


_GAP = "the gap is training accuracy − validation accuracy"
_MISTAKES = {  # what the check recomputes: the mistake it names
    "sign": f"your gap has the opposite sign: {_GAP}.",
    "on the fly": "your gap matches fit's training accuracy (measured on the fly, in training "
    "mode); measure it after training with evaluate on gap_train, as the validation accuracy.",
    "train": f"your number is the training accuracy alone: {_GAP}.",
    "val": f"your number is the validation accuracy alone: {_GAP}.",
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
    """Exercise 4.4: does weight decay narrow the train–validation gap? One run of ``gaps``
    (``{arm: {seed: gap}}``), chosen by the check, is retrained on the task's data; the verdict
    must follow the noise rule."""
    ex, (train, val) = "4.4", _task_data()

    def off(v: Any, task: float) -> bool:
        return not isinstance(v, int | float) or isinstance(v, bool) or not math.isclose(v, task)

    raise_first(ex,
        (off(weight_decay, TASK_WEIGHT_DECAY), f"weight_decay={weight_decay!r}, but the task's "
         f"is {TASK_WEIGHT_DECAY:g}", "keep the setup cell's WEIGHT_DECAY = 1e-2 and pass it."),
        (off(epochs, TASK_EPOCHS), f"epochs={epochs!r}, but the task's is {TASK_EPOCHS:g}",
         "keep the setup cell's GAP_EPOCHS = 8, train every run with it and pass it."),
        (not same_data(train_data, train), "train_data is not the task's gap_train",
         "measure every gap on gap_train and pass it as train_data."),
        (not same_data(val_data, val), "val_data is not the task's val_small",
         "measure every gap on val_small and pass it as val_data."),
    )  # fmt: skip
    on, details, decay = torch.device(device), {}, {"plain": 0.0, "weight_decay": TASK_WEIGHT_DECAY}

    def recompute(arm: str, seed: int) -> float:
        details[arm, seed] = _rerun_accuracies(decay[arm], seed, train, val, TASK_EPOCHS, on)
        return details[arm, seed]["gap"]

    def explain(reported: Mapping, again: Mapping) -> str | None:
        wrong = [r for r in again if not abs(again[r] - reported[r]) <= 0.01]
        for mistake, hint in _MISTAKES.items():
            if all(abs(details[r][mistake] - reported[r]) <= 1e-3 for r in wrong):
                return hint
        return None

    reported_runs_verdict(
        ex, gaps, verdict, arms=EXPERIMENT_ARMS, verdicts=EXPERIMENT_VERDICTS,
        recompute=recompute, tolerance=0.01, what="gap", value_range=(-1.0, 1.0),
        range_hint="a gap is a difference of two accuracies, each a fraction between 0 and 1: "
        "report train_acc - val_acc, not percentage points.",
        rerun="one", explain=explain, protocol=_PROTOCOL,
    )  # fmt: skip
    passed(
        ex,
        "the gaps come from real runs (a rerun of one of them agrees), and the verdict "
        "follows the noise rule",
    )
