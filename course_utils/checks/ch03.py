"""Checks of the chapter 3 exercises: activations: dead units and epochs to a target accuracy."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..hooks import hook_count
from ..models import FashionCNN
from ._common import (
    failure,
    passed,
)

__all__ = [
    "check_count_dead",
    "check_dead_per_layer",
    "check_epochs_to_reach",
]


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
            raise failure(
                ex,
                f"count_dead raised {type(err).__name__} on {case}: {err}",
                "handle both 4-d [N, C, H, W] and 2-d [N, F] inputs: move the unit dimension "
                "(dim 1) first and flatten the rest.",
            ) from err
        if isinstance(result, torch.Tensor) and result.numel() == 1:
            result = result.item()
        if isinstance(result, bool) or not isinstance(result, int | np.integer):
            raise failure(
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
        raise failure(ex, f"returned {result} on {case}, expected {expected}", hint)
    passed(ex, f"count_dead is right on {len(_dead_cases())} hand-built cases")


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
        raise failure(
            ex, f"dead_per_layer raised {type(err).__name__}: {err}", "read the error above."
        ) from err
    finally:
        left = hook_count(model)
    if left:
        raise failure(
            ex,
            f"{left} hook(s) are still registered after dead_per_layer returned",
            "keep the handles that register_forward_hook returns and call handle.remove() on "
            "each, in a `finally:` block.",
        )
    if not isinstance(result, Mapping):
        raise failure(ex, f"returned {type(result).__name__}", "return a dict {name: count}.")
    if set(result) != set(expected):
        raise failure(
            ex,
            f"keys {sorted(result)}, expected {sorted(expected)}",
            "hook the nn.ReLU modules, named as model.named_modules() names them.",
        )
    wrong = {k: result[k] for k in expected if result[k] != expected[k]}
    if wrong:
        raise failure(
            ex,
            f"counts {dict(result)}, expected {expected}",
            "record each ReLU's *output* in the hook and count its dead units with count_dead.",
        )
    again = fn(model, x)
    if dict(again) != dict(result):
        raise failure(
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
        raise failure(
            ex,
            "hooks stay registered when the forward pass raises",
            "remove the hooks in a `finally:` block (or a context manager), so that an error "
            "in model(x) cannot leave them behind.",
        )
    passed(
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
            raise failure(
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
        raise failure(ex, f"{accs} with target {target}: got {result!r}, expected {expected}", hint)
    passed(ex, f"epochs_to_reach is right on {len(_EPOCHS_TO_CASES)} curves")
