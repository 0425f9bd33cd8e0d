"""Chapter 4 ``check_*`` helpers: the right answer passes, each typical mistake fails."""

from __future__ import annotations

import pytest
import torch
from checks_support import fails, passes
from torch import nn

from course_utils.checks.ch04 import check_inverted_dropout, check_mc_dropout


def right_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    if not 0 <= p <= 1:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if not training or p == 0:
        return x
    if p == 1:
        return torch.zeros_like(x)
    return x * (torch.rand_like(x) >= p) / (1 - p)


def test_inverted_dropout_right_answer_passes(capsys) -> None:
    passes(check_inverted_dropout, right_dropout, "4.1", capsys)
    passes(check_inverted_dropout, lambda x, p, t: right_dropout(x, p, t).clone(), "4.1", capsys)


def no_scale(x, p, training):
    return (
        right_dropout(x, p, training) * (1 - p)
        if training and 0 < p < 1
        else right_dropout(x, p, training)
    )


def keep_with_p(x, p, training):
    if not training or p in (0, 1):
        return right_dropout(x, p, training)
    return x * (torch.rand_like(x) < p) / (1 - p)


def always_on(x, p, training):
    return right_dropout(x, p, True)


def in_place(x, p, training):
    if training and 0 < p < 1:
        x.mul_((torch.rand_like(x) >= p) / (1 - p))
    return right_dropout(x, p, False) if p < 1 or not training else torch.zeros_like(x)


def nan_at_one(x, p, training):
    if not 0 <= p <= 1:
        raise ValueError
    return x * (torch.rand_like(x) >= p) / (1 - p) if training else x


def no_validation(x, p, training):
    return right_dropout(x, min(max(p, 0.0), 1.0), training)


def fixed_mask(x, p, training):
    if not training or p in (0, 1):
        return right_dropout(x, p, training)
    g = torch.Generator().manual_seed(0)
    return x * (torch.rand(x.shape, generator=g) >= p) / (1 - p)


@pytest.mark.parametrize(
    ("fn", "hint"),
    [
        (no_scale, "scale the survivors"),
        (keep_with_p, "probability to *drop*"),
        (always_on, "return x unchanged"),
        (in_place, "input x was modified"),
        (nan_at_one, "p=1"),
        (no_validation, "raise ValueError"),
        (fixed_mask, "fresh random mask"),
    ],
    ids=["no-scale", "keep-with-p", "always-on", "in-place", "nan", "no-validation", "fixed"],
)
def test_inverted_dropout_wrong_answers_fail(fn, hint: str, capsys) -> None:
    fails(check_inverted_dropout, fn, hint, "4.1", capsys)


def right_mc(model: nn.Module) -> None:
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.Dropout | nn.Dropout2d):
            m.train()


def only_dropout1d(model: nn.Module) -> None:
    model.eval()
    for m in model.modules():
        if type(m) is nn.Dropout:
            m.train()


def test_mc_dropout_right_answer_passes(capsys) -> None:
    passes(check_mc_dropout, right_mc, "4.2", capsys)


@pytest.mark.parametrize(
    ("fn", "hint"),
    [
        (lambda m: m.train(), "start from model.eval()"),
        (lambda m: m.eval(), "nn.Dropout or nn.Dropout2d"),
        (only_dropout1d, "nn.Dropout or nn.Dropout2d"),
    ],
    ids=["train", "eval", "only-1d"],
)
def test_mc_dropout_wrong_answers_fail(fn, hint: str, capsys) -> None:
    fails(check_mc_dropout, fn, hint, "4.2", capsys)
