"""Chapter 3 ``check_*`` helpers: the right answer passes, each typical mistake fails."""

from __future__ import annotations

import pytest
import torch
from checks_support import fails, passes
from torch import nn

from course_utils.checks.ch03 import check_count_dead, check_dead_per_layer, check_epochs_to_reach


def right_count(acts: torch.Tensor) -> int:
    return int((acts.transpose(0, 1).flatten(1).amax(1) == 0).sum())


def test_count_dead_right_answer_passes(capsys) -> None:
    passes(check_count_dead, right_count, "3.1", capsys)


@pytest.mark.parametrize(
    ("fn", "hint"),
    [
        (lambda a: int((a == 0).sum()), "not zero elements"),
        (
            lambda a: (
                int((a.flatten(2).amax(-1) == 0).any(0).sum())
                if a.dim() == 4
                else int((a == 0).any(0).sum())
            ),
            "*every* image",
        ),
        (lambda a: int((a.flatten(1).amax(1) == 0).sum()), "dim 1"),
        (lambda a: torch.tensor([1.0, 2.0]), "not an int"),
        (lambda a: float(right_count(a)), "not an int"),
    ],
    ids=["elements", "some-image", "per-image-units", "tensor", "float"],
)
def test_count_dead_wrong_answers_fail(fn, hint: str, capsys) -> None:
    fails(check_count_dead, fn, hint, "3.1", capsys)


def right_per_layer(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    recorded: dict[str, torch.Tensor] = {}
    handles = [
        m.register_forward_hook(lambda _m, _i, out, name=name: recorded.__setitem__(name, out))
        for name, m in model.named_modules()
        if isinstance(m, nn.ReLU)
    ]
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return {name: right_count(out) for name, out in recorded.items()}


def leaves_hooks(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    recorded: dict[str, torch.Tensor] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.ReLU):
            m.register_forward_hook(lambda _m, _i, out, name=name: recorded.__setitem__(name, out))
    with torch.no_grad():
        model(x)
    return {name: right_count(out) for name, out in recorded.items()}


def no_finally(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    recorded: dict[str, torch.Tensor] = {}
    handles = [
        m.register_forward_hook(lambda _m, _i, out, name=name: recorded.__setitem__(name, out))
        for name, m in model.named_modules()
        if isinstance(m, nn.ReLU)
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return {name: right_count(out) for name, out in recorded.items()}


def hooks_convs(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    out = {}
    for (name, _), (_, conv) in zip(
        [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ReLU)],
        [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)],
        strict=False,
    ):
        with torch.no_grad():
            out[name] = right_count(conv.weight[None] if conv.weight.dim() == 2 else conv.weight)
    return out


def test_dead_per_layer_right_answer_passes(capsys) -> None:
    passes(check_dead_per_layer, right_per_layer, "3.2", capsys)


@pytest.mark.parametrize(
    ("fn", "hint"),
    [
        (leaves_hooks, "handle.remove()"),
        (no_finally, "`finally:` block"),
        (hooks_convs, "record each ReLU's *output*"),
        (lambda m, x: {"relu": 0}, "hook the nn.ReLU modules"),
    ],
    ids=["leaves-hooks", "no-finally", "wrong-module", "wrong-keys"],
)
def test_dead_per_layer_wrong_answers_fail(fn, hint: str, capsys) -> None:
    fails(check_dead_per_layer, fn, hint, "3.2", capsys)


def right_epochs_to(accs, target):
    return next((i for i, a in enumerate(accs, start=1) if a >= target), None)


def test_epochs_to_reach_right_answer_passes(capsys) -> None:
    passes(check_epochs_to_reach, right_epochs_to, "3.3", capsys)


@pytest.mark.parametrize(
    ("fn", "hint"),
    [
        (lambda a, t: next((i for i, v in enumerate(a) if v >= t), None), "counted from 1"),
        (lambda a, t: next((i for i, v in enumerate(a, 1) if v > t), None), "use >="),
        (
            lambda a, t: max(range(1, len(a) + 1), key=lambda i: a[i - 1]) if max(a) >= t else None,
            "*first* epoch",
        ),
        (lambda a, t: next((i for i, v in enumerate(a, 1) if v >= t), -1), "return None"),
    ],
    ids=["zero-based", "strict", "best", "minus-one"],
)
def test_epochs_to_reach_wrong_answers_fail(fn, hint: str, capsys) -> None:
    fails(check_epochs_to_reach, fn, hint, "3.3", capsys)
