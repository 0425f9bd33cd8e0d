"""Chapter 2–4 ``check_*`` helpers: the right answer passes, each typical mistake fails."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_utils.checks import (
    check_batchnorm_fn,
    check_batchnorm_placement,
    check_count_dead,
    check_dead_per_layer,
    check_epochs_to_reach,
    check_inverted_dropout,
    check_mc_dropout,
)


def fails(check: Callable, answer: object, hint: str, ex: str, capsys) -> None:
    with pytest.raises(AssertionError) as err:
        check(answer)
    assert hint in str(err.value), str(err.value)
    assert capsys.readouterr().out.startswith(f"❌ Exercise {ex}:")


def passes(check: Callable, answer: object, ex: str, capsys) -> None:
    check(answer)
    assert capsys.readouterr().out.startswith(f"✅ Exercise {ex}:")


# --- 2.1: BatchNorm placement ------------------------------------------------------------------


def make_cnn(order: str = "conv-bn-relu", bn2_features: int = 64, use_bn2: bool = True):
    class CNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(32)
            self.conv2 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(bn2_features)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(64 * 7 * 7, 10)

        def block(self, conv: nn.Module, bn: nn.Module, x: torch.Tensor, use: bool = True):
            if not use:
                return self.pool(F.relu(conv(x)))
            if order == "conv-relu-bn":
                return self.pool(bn(F.relu(conv(x))))
            return self.pool(F.relu(bn(conv(x))))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.block(self.conv1, self.bn1, x)
            x = self.block(self.conv2, self.bn2, x, use_bn2)
            return self.fc(torch.flatten(x, 1))

    return CNN


class SequentialBN(nn.Module):
    """The same idea written with nn.Sequential and a ReLU module."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 7 * 7, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_batchnorm_placement_right_answers_pass(capsys) -> None:
    passes(check_batchnorm_placement, make_cnn(), "2.1", capsys)
    passes(check_batchnorm_placement, SequentialBN, "2.1", capsys)


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (make_cnn(order="conv-relu-bn"), "conv → BatchNorm2d → ReLU"),
        (make_cnn(bn2_features=32), "num_features"),
        (make_cnn(use_bn2=False), "does not go to a BatchNorm2d"),
    ],
    ids=["bn-after-relu", "wrong-num-features", "second-bn-unused"],
)
def test_batchnorm_placement_wrong_answers_fail(answer, hint: str, capsys) -> None:
    fails(check_batchnorm_placement, answer, hint, "2.1", capsys)


def test_batchnorm_placement_batchnorm1d_fails(capsys) -> None:
    class OneD(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
            self.bn = nn.BatchNorm1d(4)
            self.fc = nn.Linear(4 * 28 * 28, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(self.conv2(self.conv(x)), 1))

    fails(check_batchnorm_placement, OneD, "no nn.BatchNorm2d", "2.1", capsys)


# --- 2.2: BatchNorm by hand --------------------------------------------------------------------


def right_bn(x, gamma, beta, running_mean, running_var, momentum=0.1, eps=1e-5):
    mean = x.mean(dim=(0, 2, 3))
    var = x.var(dim=(0, 2, 3), unbiased=False)
    n = x.numel() / x.shape[1]
    shape = (1, -1, 1, 1)
    x_hat = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + eps)
    y = gamma.view(shape) * x_hat + beta.view(shape)
    new_mean = (1 - momentum) * running_mean + momentum * mean
    new_var = (1 - momentum) * running_var + momentum * var * n / (n - 1)
    return y, new_mean, new_var


def unbiased_normalise(x, gamma, beta, rm, rv, momentum=0.1, eps=1e-5):
    y, m, v = right_bn(x, gamma, beta, rm, rv, momentum, eps)
    mean, var = x.mean(dim=(0, 2, 3), keepdim=True), x.var(dim=(0, 2, 3), keepdim=True)
    return (
        gamma.view(1, -1, 1, 1) * (x - mean) / torch.sqrt(var + eps) + beta.view(1, -1, 1, 1),
        m,
        v,
    )


def biased_running_var(x, gamma, beta, rm, rv, momentum=0.1, eps=1e-5):
    y, m, _ = right_bn(x, gamma, beta, rm, rv, momentum, eps)
    return y, m, (1 - momentum) * rv + momentum * x.var(dim=(0, 2, 3), unbiased=False)


def momentum_reversed(x, gamma, beta, rm, rv, momentum=0.1, eps=1e-5):
    y, _, v = right_bn(x, gamma, beta, rm, rv, momentum, eps)
    return y, momentum * rm + (1 - momentum) * x.mean(dim=(0, 2, 3)), v


def per_image(x, gamma, beta, rm, rv, momentum=0.1, eps=1e-5):
    _, m, v = right_bn(x, gamma, beta, rm, rv, momentum, eps)
    mean, var = x.mean(dim=(2, 3), keepdim=True), x.var(dim=(2, 3), keepdim=True, unbiased=False)
    return (
        gamma.view(1, -1, 1, 1) * (x - mean) / torch.sqrt(var + eps) + beta.view(1, -1, 1, 1),
        m,
        v,
    )


def no_affine(x, gamma, beta, rm, rv, momentum=0.1, eps=1e-5):
    _, m, v = right_bn(x, gamma, beta, rm, rv, momentum, eps)
    mean, var = (
        x.mean(dim=(0, 2, 3), keepdim=True),
        x.var(dim=(0, 2, 3), keepdim=True, unbiased=False),
    )
    return (x - mean) / torch.sqrt(var + eps), m, v


def test_batchnorm_fn_right_answer_passes(capsys) -> None:
    passes(check_batchnorm_fn, right_bn, "2.2", capsys)


@pytest.mark.parametrize(
    ("fn", "hint"),
    [
        (unbiased_normalise, "biased variance"),
        (biased_running_var, "*unbiased* batch variance"),
        (momentum_reversed, "momentum weighs the batch"),
        (per_image, "per channel, over the batch"),
        (no_affine, "gamma * x_hat + beta"),
        (lambda x, g, b, m, v, *a: (x, m, v), "per channel"),
        (lambda x, g, b, m, v, *a: x, "three tensors"),
    ],
    ids=["unbiased-normalise", "biased-running", "momentum", "per-image", "no-affine", "id", "one"],
)
def test_batchnorm_fn_wrong_answers_fail(fn, hint: str, capsys) -> None:
    fails(check_batchnorm_fn, fn, hint, "2.2", capsys)


# --- 3.1: count dead units ---------------------------------------------------------------------


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


# --- 3.2: dead units per layer with hooks ------------------------------------------------------


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


# --- 3.3: epochs to reach ----------------------------------------------------------------------


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


# --- 4.1: inverted dropout ---------------------------------------------------------------------


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


# --- 4.2: Monte-Carlo dropout ------------------------------------------------------------------


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
