"""Checks of the chapter 4 exercises: dropout: inverted dropout and Monte-Carlo dropout."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..models import FashionCNN
from ._common import (
    failure,
    passed,
)

__all__ = [
    "check_inverted_dropout",
    "check_mc_dropout",
]


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
            raise failure(
                ex,
                f"inverted_dropout raised {type(err).__name__} (p={p}): {err}",
                "read the error above; a valid p must not raise.",
            ) from err
        if not torch.equal(t, original):
            raise failure(ex, "the input x was modified", "build a new tensor: x * mask / (1 - p).")
        if not isinstance(out, torch.Tensor) or out.shape != t.shape:
            raise failure(ex, f"p={p}: output is not a tensor of x's shape", "return a tensor.")
        return out

    if not torch.equal(call(x, 0.5, False), x):
        raise failure(
            ex,
            "in eval mode (training=False) the output differs from x",
            "dropout does nothing at evaluation time: return x unchanged.",
        )
    if not torch.equal(call(x, 0.0, True), x):
        raise failure(ex, "p=0 changed x", "with p=0 nothing is dropped and the scale is 1.")
    ones = torch.ones_like(x)
    for p in (0.3, 0.5):
        out = call(ones, p, True)
        dropped = (out == 0).float().mean().item()
        kept = out[out != 0]
        if abs(dropped - (1 - p)) < 0.02 and abs(dropped - p) > 0.02:
            raise failure(
                ex,
                f"p={p}: {dropped:.1%} of the elements were zeroed",
                "p is the probability to *drop*: keep an element when rand >= p.",
            )
        if abs(dropped - p) > 0.01:
            raise failure(
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
            raise failure(ex, f"p={p}: kept elements of a tensor of ones are {value:.3f}", hint)
    out = call(x, 0.5, True)
    mask = out != 0
    if not torch.allclose(out[mask], x[mask] / 0.5):
        raise failure(ex, "kept elements are not x / (1 - p)", "multiply x by the mask first.")
    if torch.equal(call(x, 0.5, True), fn(x, 0.5, True)):
        raise failure(ex, "two calls gave the same mask", "draw a fresh random mask every call.")
    out = call(x, 1.0, True)
    if not torch.equal(out, torch.zeros_like(x)):
        raise failure(
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
            raise failure(
                ex, f"p={bad} raised {type(err).__name__}, not ValueError", "raise ValueError."
            ) from err
        raise failure(ex, f"p={bad} was accepted", "raise ValueError unless 0 <= p <= 1.")
    passed(
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
        raise failure(
            ex, f"enable_mc_dropout raised {type(err).__name__}: {err}", "read it."
        ) from err
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
