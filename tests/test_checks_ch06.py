"""Chapter 6 ``check_*`` helpers: the right answer passes, each typical mistake fails."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from course_utils.checks.ch06 import check_freeze_bn_block, check_freeze_conv1


def _fails(check: Callable[[object], None], answer: object, hint: str, capsys) -> None:
    with pytest.raises(AssertionError) as err:
        check(answer)
    assert hint in str(err.value)
    assert "❌ Exercise" in capsys.readouterr().out


def _freeze_right(model: nn.Module) -> torch.optim.Optimizer:
    model.conv1.requires_grad_(False)
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)


def test_freeze_conv1_right_answer_passes(capsys: pytest.CaptureFixture[str]) -> None:
    check_freeze_conv1(_freeze_right)
    assert capsys.readouterr().out.startswith("✅ Exercise 6.1:")


def _all_params(model: nn.Module) -> torch.optim.Optimizer:
    model.conv1.requires_grad_(False)
    return torch.optim.AdamW(model.parameters(), lr=1e-3)


def _not_frozen(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(
        [p for n, p in model.named_parameters() if not n.startswith("conv1")], lr=1e-3
    )


def _froze_too_much(model: nn.Module) -> torch.optim.Optimizer:
    model.conv1.requires_grad_(False)
    model.conv2.requires_grad_(False)
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)


def _only_weight(model: nn.Module) -> torch.optim.Optimizer:
    model.conv1.weight.requires_grad_(False)  # the bias still trains
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)


def _misses_head(model: nn.Module) -> torch.optim.Optimizer:
    model.conv1.requires_grad_(False)
    return torch.optim.Adam(model.conv2.parameters(), lr=1e-3)


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (_all_params, "give it only the trainable ones"),
        (_not_frozen, "requires_grad_(False)"),
        (_froze_too_much, "leave every other layer trainable"),
        (_only_weight, "requires_grad_(False)"),
        (_misses_head, "pass every trainable parameter"),
        (lambda model: None, "return the optimiser"),
    ],
)
def test_freeze_conv1_wrong_answers_fail(answer, hint, capsys) -> None:
    _fails(check_freeze_conv1, answer, hint, capsys)


def _freeze_bn_right(model: nn.Module) -> None:
    for layer in (model.conv1, model.bn1):
        layer.requires_grad_(False)
    model.bn1.register_forward_pre_hook(lambda m, _args: setattr(m, "training", False))


def _freeze_bn_eval_once(model: nn.Module) -> None:
    model.conv1.requires_grad_(False)
    model.bn1.requires_grad_(False)
    model.bn1.eval()  # undone by the next model.train()


def test_freeze_bn_right_answers_pass(capsys: pytest.CaptureFixture[str]) -> None:
    check_freeze_bn_block(_freeze_bn_right)
    from course_utils.transfer import freeze

    check_freeze_bn_block(lambda model: freeze(model, ["conv1", "bn1"]))
    assert capsys.readouterr().out.count("✅ Exercise 6.2:") == 2


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (_freeze_bn_eval_once, "running"),
        (lambda model: model.conv1.requires_grad_(False), "still require grad"),
    ],
)
def test_freeze_bn_wrong_answers_fail(answer, hint, capsys) -> None:
    _fails(check_freeze_bn_block, answer, hint, capsys)
