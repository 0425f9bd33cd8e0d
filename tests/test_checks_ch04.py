"""Chapter 4 ``check_*`` helpers: the right answer passes, each typical mistake fails, and every
library dropout is refused in the write-it-yourself tasks."""

from __future__ import annotations

import checks_support
import pytest
import torch
import torch.nn.functional as F
from checks_support import fails, passes
from torch import nn

from course_utils.checks import _common, ch04
from course_utils.checks._common import ShortcutRefused
from course_utils.checks.ch04 import (
    DROPOUT_SHORTCUTS,
    TASK_WEIGHT_DECAY,
    _rerun_accuracies,
    check_channel_dropout,
    check_dropout_module,
    check_mc_dropout,
    check_weight_decay_experiment,
)
from course_utils.data import FashionMNISTTensors

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


class FeatureMaskDropout(nn.Module):
    """One keep/drop draw per feature (the last dimension), shared by every row: the exact
    share p of each row is dropped, the mask is fresh at each call and gradients flow, so the
    rate, scale and gradient checks all passed."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(p)
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p == 1:
            return torch.zeros_like(x)
        n = x.shape[-1]
        keep = torch.ones(n)
        keep[torch.randperm(n)[: round(self.p * n)]] = 0
        return x * keep / (1 - self.p)


class DoubleDropout(nn.Module):
    """Right values in float64: the gradient comparison used to crash with a raw RuntimeError."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(p)
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p == 1:
            return torch.zeros_like(x)
        return x.double() * (torch.rand_like(x) >= self.p) / (1 - self.p)


def test_dropout_module_other_dtype_fails_with_a_hint(capsys) -> None:
    fails(check_dropout_module, DoubleDropout, "keep x's dtype", "4.1", capsys)


def test_dropout_module_one_mask_for_every_row_fails(capsys) -> None:
    fails(check_dropout_module, FeatureMaskDropout, "every row got the same mask", "4.1", capsys)


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


def only_batchnorm_eval(model: nn.Module) -> None:
    """BatchNorm to eval mode and nothing else: the model and its other layers stay in
    training mode. The fixture could not tell it from model.eval() + dropout.train()."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def test_mc_dropout_only_batchnorm_to_eval_fails(capsys) -> None:
    fails(check_mc_dropout, only_batchnorm_eval, "put the whole model in eval mode", "4.2", capsys)


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

EPOCHS = 3  # the tiny task's GAP_EPOCHS (the real task pins 8)


def tiny_split(n: int, seed: int) -> FashionMNISTTensors:
    """``n`` learnable images: a class's prototype half-blended with noise."""
    prototypes = torch.rand(10, 28, 28, generator=torch.Generator().manual_seed(99))
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = (0.3 * prototypes[labels] + 0.7 * torch.rand(n, 28, 28, generator=g)) * 255
    return FashionMNISTTensors(images.to(torch.uint8), labels)


TRAIN, VAL = tiny_split(256, 0), tiny_split(128, 1)


@pytest.fixture(scope="module")
def runs() -> dict[tuple[str, int], dict[str, float]]:
    """Every run of the tiny task: its gap and what the recognised mistakes would report."""
    return {
        (arm, s): _rerun_accuracies(wd, s, TRAIN, VAL, EPOCHS, "cpu")
        for arm, wd in (("plain", 0.0), ("weight_decay", TASK_WEIGHT_DECAY))
        for s in (0, 1)
    }


@pytest.fixture
def task(monkeypatch) -> None:
    """The check's own copy of the task's data, tiny, and its epochs."""
    monkeypatch.setattr(ch04, "_task_data", lambda: (TRAIN, VAL), raising=False)
    monkeypatch.setattr(ch04, "TASK_EPOCHS", EPOCHS)


def gaps_by(runs, key: str = "gap") -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for (a, s), values in runs.items():
        out.setdefault(a, {})[s] = values[key]
    return out


def honest_verdict(gaps) -> str:
    verdicts = ("weight decay narrows the gap", "weight decay widens the gap", "within noise")
    return checks_support.honest_verdict(gaps, "plain", "weight_decay", verdicts)


def run_check(gaps, verdict, *, train=TRAIN, val=VAL, wd=TASK_WEIGHT_DECAY, epochs=EPOCHS):
    check_weight_decay_experiment(gaps, verdict, train, val, wd, epochs)


@pytest.mark.slow
def test_the_tiny_task_tells_runs_apart(runs) -> None:
    gaps = [r["gap"] for r in runs.values()]
    assert len(set(gaps)) == len(gaps), runs
    assert all(abs(r["on the fly"] - r["gap"]) > 0.01 for r in runs.values()), runs


@pytest.mark.slow
def test_weight_decay_experiment_honest_report_passes(task, runs, capsys) -> None:
    gaps = gaps_by(runs)
    passes(lambda v: run_check(gaps, v), honest_verdict(gaps), "4.4", capsys)


class Pick:
    """A stand-in for the check's own random generator, that picks ``run``."""

    def __init__(self, run: tuple[str, int]) -> None:
        self.run = run

    def randrange(self, n: int) -> int:
        runs = sorted((a, s) for a in ("plain", "weight_decay") for s in (0, 1))
        assert n == len(runs)
        return runs.index(self.run)


@pytest.mark.parametrize(
    "checked", [("plain", 0), ("plain", 1), ("weight_decay", 1)], ids=lambda r: f"{r[0]}-{r[1]}"
)
@pytest.mark.slow
def test_weight_decay_experiment_right_for_the_picked_run_only_fails(
    task, runs, checked, monkeypatch, capsys
) -> None:
    """The hole of issue 20: the check retrained the run picked by the sum of the reported
    gaps, so a report right for that run only passed. The run is now the check's own random
    choice: whichever of the wrong runs it picks, the report fails."""
    fake = checks_support.right_for_one_run_only(gaps_by(runs), ("weight_decay", 0))
    monkeypatch.setattr(_common, "_PICKER", Pick(checked), raising=False)
    fails(lambda v: run_check(fake, v), honest_verdict(fake), "a rerun gave", "4.4", capsys)


def consistent_with(wd: float = TASK_WEIGHT_DECAY, epochs: int = EPOCHS, train=TRAIN):
    arms = (("plain", 0.0), ("weight_decay", wd))
    return {
        a: {s: _rerun_accuracies(w, s, train, VAL, epochs, "cpu")["gap"] for s in (0, 1)}
        for a, w in arms
    }


@pytest.mark.parametrize(
    ("settings", "hint"),
    [
        ({"wd": 0.0}, "WEIGHT_DECAY = 1e-2"),
        ({"epochs": 1}, "GAP_EPOCHS = 8"),
        ({"train": tiny_split(256, 5)}, "is not the task's gap_train"),
    ],
    ids=["weight-decay-zero", "fewer-epochs", "other-training-data"],
)
@pytest.mark.slow
def test_weight_decay_experiment_settings_are_the_task_s(task, settings, hint, capsys) -> None:
    """The check used to retrain with the learner's own settings: WEIGHT_DECAY = 0 (both arms
    alike, "within noise") or fewer epochs, reported consistently, passed."""
    gaps = consistent_with(**settings)
    fails(lambda v: run_check(gaps, v, **settings), honest_verdict(gaps), hint, "4.4", capsys)


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ("sign", "opposite sign"),
        ("on the fly", "fit's training accuracy"),
        ("train", "training accuracy alone"),
    ],
    ids=["val-minus-train", "on-the-fly-train-accuracy", "train-accuracy-only"],
)
@pytest.mark.slow
def test_weight_decay_experiment_names_the_gap_s_mistake(
    task, runs, mistake, hint, monkeypatch, capsys
) -> None:
    """Gaps measured the wrong way: the hint names it instead of blaming the protocol."""
    gaps = gaps_by(runs, mistake)
    monkeypatch.setattr(_common, "_PICKER", Pick(("plain", 0)), raising=False)
    message = fails(lambda v: run_check(gaps, v), honest_verdict(gaps), hint, "4.4", capsys)
    assert "protocol" not in message.split("Hint:")[1]


def made_up(runs):
    fake = {a: {s: v + 0.05 for s, v in r.items()} for a, r in gaps_by(runs).items()}
    return fake, honest_verdict(fake)


def percentage_points(runs):
    fake = {a: {s: 100 * v for s, v in r.items()} for a, r in gaps_by(runs).items()}
    return fake, "within noise"


def one_seed(runs):
    return {a: {0: r[0]} for a, r in gaps_by(runs).items()}, "within noise"


def claims_within_noise(_runs):  # paired differences -0.01 and +0.03: within noise
    return {"plain": {0: 0.10, 1: 0.12}, "weight_decay": {0: 0.11, 1: 0.09}}, (
        "weight decay narrows the gap"
    )


def calls_real_difference_noise(_runs):  # paired differences 0.050 and 0.051: beyond noise
    return {"plain": {0: 0.10, 1: 0.102}, "weight_decay": {0: 0.05, 1: 0.051}}, "within noise"


def wrong_direction(_runs):
    return {"plain": {0: 0.10, 1: 0.102}, "weight_decay": {0: 0.05, 1: 0.051}}, (
        "weight decay widens the gap"
    )


def missing_arm(runs):
    return {"plain": gaps_by(runs)["plain"]}, "within noise"


@pytest.mark.parametrize(
    ("make", "hint"),
    [
        (made_up, "a rerun gave"),
        (percentage_points, "not percentage points"),
        (one_seed, "need 2 seeds"),
        (claims_within_noise, "within noise"),
        (calls_real_difference_noise, "is beyond seed noise"),
        (wrong_direction, "in the other direction"),
        (missing_arm, "expected the arms"),
    ],
    ids=[
        "made-up-numbers",
        "percentage-points",
        "one-seed",
        "claims-a-difference-within-noise",
        "calls-a-real-difference-noise",
        "wrong-direction",
        "missing-arm",
    ],
)
@pytest.mark.slow
def test_weight_decay_experiment_wrong_reports_fail(task, runs, make, hint: str, capsys) -> None:
    gaps, verdict = make(runs)
    fails(lambda v: run_check(gaps, v), verdict, hint, "4.4", capsys)
