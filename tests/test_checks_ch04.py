"""Chapter 4 ``check_*`` helpers: the right answer passes, each typical mistake fails, and every
library dropout is refused in the write-it-yourself tasks."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from checks_support import fails, passes
from torch import nn

from course_utils.checks._common import ShortcutRefused
from course_utils.checks.ch04 import (
    DROPOUT_SHORTCUTS,
    _rerun_gap,
    check_channel_dropout,
    check_dropout_module,
    check_mc_dropout,
    check_weight_decay_experiment,
)
from course_utils.data import FashionMNISTTensors
from course_utils.experiments import compare

# --- 4.1 ---------------------------------------------------------------------------------------


def make_dropout(
    *,
    scale="divide",
    keep="ge",
    use_mode=True,
    in_place=False,
    p_one=True,
    validate=True,
    fixed=False,
    detach=False,
    blocked=False,
):
    """A Dropout class with one mistake switched on by its keyword arguments."""

    class Dropout(nn.Module):
        def __init__(self, p: float = 0.5) -> None:
            super().__init__()
            if validate and not 0 <= p <= 1:
                raise ValueError(p)
            self.p = p

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            p = self.p
            if (use_mode and not self.training) or p == 0:
                return x
            if p_one and p == 1:
                return torch.zeros_like(x)
            if fixed:
                r = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
            else:
                r = torch.rand_like(x)
            mask = (r >= p) if keep == "ge" else (r < p)
            factor = {"divide": 1 / (1 - p), "none": 1.0, "multiply": 1 - p}[scale]
            if in_place:
                return x.mul_(mask * factor)
            if detach:
                return (x * mask * factor).detach()
            if blocked:  # right values, but no gradient reaches x
                return torch.where(mask, x.detach() * factor, x * 0)
            return x * mask * factor

    return Dropout


def test_dropout_module_right_answer_passes(capsys) -> None:
    passes(check_dropout_module, make_dropout(), "4.1", capsys)


@pytest.mark.parametrize(
    ("cls", "hint"),
    [
        (make_dropout(scale="none"), "scale the survivors"),
        (make_dropout(scale="multiply"), "do not multiply"),
        (make_dropout(keep="lt"), "probability to *drop*"),
        (make_dropout(use_mode=False), "self.training"),
        (make_dropout(in_place=True), "do not write into x"),
        (make_dropout(p_one=False), "p=1"),
        (make_dropout(validate=False), "raise ValueError"),
        (make_dropout(fixed=True), "fresh mask"),
        (make_dropout(detach=True), "without .detach()"),
        (make_dropout(blocked=True), "gradient with respect to x"),
        (lambda p: nn.Identity(), "elements were zeroed"),
    ],
    ids=[
        "no-scale",
        "multiplies-by-1-p",
        "keeps-with-p",
        "ignores-eval-mode",
        "in-place",
        "nan-at-p-1",
        "no-validation",
        "fixed-mask",
        "detached",
        "gradient-blocked",
        "identity",
    ],
)
def test_dropout_module_wrong_answers_fail(cls, hint: str, capsys) -> None:
    fails(check_dropout_module, cls, hint, "4.1", capsys)


class ViaFunctional(nn.Module):
    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)


class ViaTorch(ViaFunctional):
    def forward(self, x):
        return torch.dropout(x, self.p, self.training)


class ViaNativeDropout(ViaFunctional):
    def forward(self, x):
        return torch.native_dropout(x, self.p, self.training)[0]


class ViaModule(ViaFunctional):
    def forward(self, x):
        return nn.Dropout(self.p).train(self.training)(x)


class Subclassed(nn.Dropout):
    pass


from torch.nn.functional import dropout as imported_dropout  # noqa: E402


class ViaImportedName(ViaFunctional):
    def forward(self, x):
        return imported_dropout(x, self.p, self.training)


SHORTCUT_CASES = pytest.mark.parametrize(
    "cls",
    [ViaFunctional, ViaTorch, ViaNativeDropout, ViaModule, Subclassed, nn.Dropout, ViaImportedName],
    ids=[
        "F.dropout",
        "torch.dropout",
        "torch.native_dropout",
        "nn.Dropout-inside",
        "subclass-nn.Dropout",
        "nn.Dropout",
        "imported-alias",
    ],
)


def restored() -> bool:
    import torch.nn.modules.dropout as dropout_module

    return (
        F.dropout is imported_dropout
        and nn.Dropout is dropout_module.Dropout
        and all(getattr(getattr(o, n), "__name__", "") != "refused" for o, n in DROPOUT_SHORTCUTS)
        and globals()["imported_dropout"] is F.dropout
    )


@SHORTCUT_CASES
def test_dropout_module_refuses_library_dropout(cls, capsys) -> None:
    with pytest.raises(ShortcutRefused, match="switched off"):
        check_dropout_module(cls)
    assert "❌ Exercise 4.1:" in capsys.readouterr().out
    assert restored()


# --- 4.2 ---------------------------------------------------------------------------------------


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


# --- 4.3 ---------------------------------------------------------------------------------------


def make_channel_dropout(*, mask="per-channel", scale=True, check_dim=True, use_mode=True):
    class ChannelDropout(nn.Module):
        def __init__(self, p: float = 0.5) -> None:
            super().__init__()
            if not 0 <= p <= 1:
                raise ValueError(p)
            self.p = p

        def forward(self, x):
            if check_dim and x.dim() != 4:
                raise ValueError("4-d")
            if (use_mode and not self.training) or self.p == 0:
                return x
            if self.p == 1:
                return torch.zeros_like(x)
            n, c = x.shape[:2]
            shape = {
                "per-channel": (n, c, 1, 1),
                "elementwise": tuple(x.shape),
                "whole-batch": (1, c, 1, 1),
                "per-image": (n, 1, 1, 1),
            }[mask]
            keep = torch.rand(shape) >= self.p
            return x * keep / (1 - self.p) if scale else x * keep

    return ChannelDropout


def test_channel_dropout_right_answer_passes(capsys) -> None:
    passes(check_channel_dropout, make_channel_dropout(), "4.3", capsys)


@pytest.mark.parametrize(
    ("cls", "hint"),
    [
        (make_channel_dropout(mask="elementwise"), "[N, C, 1, 1]"),
        (make_channel_dropout(mask="whole-batch"), "one draw per image *and* channel"),
        (make_channel_dropout(mask="per-image"), "one draw per image *and* channel"),
        (make_channel_dropout(scale=False), "scale the survivors"),
        (make_channel_dropout(check_dim=False), "raise ValueError otherwise"),
        (make_channel_dropout(use_mode=False), "self.training"),
        (make_dropout(), "[N, C, 1, 1]"),
    ],
    ids=[
        "elementwise-mask",
        "one-mask-for-the-batch",
        "one-draw-per-image",
        "no-scale",
        "accepts-2d",
        "ignores-eval-mode",
        "plain-dropout",
    ],
)
def test_channel_dropout_wrong_answers_fail(cls, hint: str, capsys) -> None:
    fails(check_channel_dropout, cls, hint, "4.3", capsys)


class ViaDropout2d(ViaFunctional):
    def forward(self, x):
        if x.dim() != 4:
            raise ValueError
        return F.dropout2d(x, self.p, self.training)


class ViaFeatureDropout(ViaDropout2d):
    def forward(self, x):
        if x.dim() != 4:
            raise ValueError
        return torch.feature_dropout(x, self.p, self.training)


@pytest.mark.parametrize(
    "cls",
    [ViaDropout2d, ViaFeatureDropout, nn.Dropout2d],
    ids=["F.dropout2d", "torch.feature_dropout", "nn.Dropout2d"],
)
def test_channel_dropout_refuses_library_dropout(cls, capsys) -> None:
    with pytest.raises(ShortcutRefused, match="switched off"):
        check_channel_dropout(cls)
    assert "❌ Exercise 4.3:" in capsys.readouterr().out
    assert restored()


# --- 4.4 ---------------------------------------------------------------------------------------

WD, EPOCHS = 1e-2, 2


@pytest.fixture(scope="module")
def tiny_data():
    g = torch.Generator().manual_seed(0)

    def split(n):
        return FashionMNISTTensors(
            torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8),
            torch.randint(0, 10, (n,), generator=g),
        )

    train, val = split(192), split(128)
    gaps = {
        arm: {s: _rerun_gap(wd, s, train, val, EPOCHS, "cpu") for s in (0, 1)}
        for arm, wd in (("plain", 0.0), ("weight_decay", WD))
    }
    return train, val, gaps


def honest_verdict(gaps) -> str:
    runs = pd.DataFrame(
        {"variant": a, "seed": s, "v": v} for a, r in gaps.items() for s, v in r.items()
    )
    c = compare(runs, "plain", "weight_decay", "v")
    if c.beyond_noise:
        return "weight decay narrows the gap" if c.diff > 0 else "weight decay widens the gap"
    return "within noise"


def run_check(tiny_data, gaps, verdict):
    train, val, _ = tiny_data
    check_weight_decay_experiment(gaps, verdict, train, val, WD, EPOCHS)


def test_weight_decay_experiment_honest_report_passes(tiny_data, capsys) -> None:
    gaps = tiny_data[2]
    passes(lambda v: run_check(tiny_data, gaps, v), honest_verdict(gaps), "4.4", capsys)


def made_up(gaps):
    fake = {a: {s: v + 0.05 for s, v in r.items()} for a, r in gaps.items()}
    return fake, honest_verdict(fake)


def one_seed(gaps):
    return {a: {0: r[0]} for a, r in gaps.items()}, "within noise"


def claims_within_noise(_gaps):
    return {"plain": {0: 0.10, 1: 0.12}, "weight_decay": {0: 0.09, 1: 0.11}}, (
        "weight decay narrows the gap"
    )


def calls_real_difference_noise(_gaps):
    return {"plain": {0: 0.10, 1: 0.101}, "weight_decay": {0: 0.05, 1: 0.051}}, "within noise"


def wrong_direction(_gaps):
    return {"plain": {0: 0.10, 1: 0.101}, "weight_decay": {0: 0.05, 1: 0.051}}, (
        "weight decay widens the gap"
    )


def missing_arm(gaps):
    return {"plain": gaps["plain"]}, "within noise"


@pytest.mark.parametrize(
    ("make", "hint"),
    [
        (made_up, "a rerun gave"),
        (one_seed, "need 2 seeds"),
        (claims_within_noise, "within noise."),
        (calls_real_difference_noise, "this difference is real"),
        (wrong_direction, "this difference is real"),
        (missing_arm, "expected the arms"),
    ],
    ids=[
        "made-up-numbers",
        "one-seed",
        "claims-a-difference-within-noise",
        "calls-a-real-difference-noise",
        "wrong-direction",
        "missing-arm",
    ],
)
def test_weight_decay_experiment_wrong_reports_fail(tiny_data, make, hint: str, capsys) -> None:
    gaps, verdict = make(tiny_data[2])
    fails(lambda v: run_check(tiny_data, gaps, v), verdict, hint, "4.4", capsys)
