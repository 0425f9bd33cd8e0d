"""Chapter 2 ``check_*`` helpers: the right answer passes, each typical mistake fails."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from checks_support import fails, passes
from torch import nn

from course_utils.checks.ch02 import (
    VERDICTS,
    check_batchnorm_fn,
    check_batchnorm_placement,
    check_lr_experiment,
)

imported_batch_norm = F.batch_norm  # as `from torch.nn.functional import batch_norm` would


def make_cnn(
    order: str = "conv-bn-relu",
    bn2_features: int = 64,
    use_bn2: bool = True,
    typed_flatten: bool = False,
):
    class CNN(nn.Module):
        def __init__(self, input_size: int = 28) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(32)
            self.conv2 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(bn2_features)
            self.pool = nn.MaxPool2d(2)
            side = 7 if typed_flatten else input_size // 4
            self.fc = nn.Linear(64 * side * side, 10)

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

    def __init__(self, input_size: int = 28) -> None:
        super().__init__()
        side = input_size // 4
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
            nn.Linear(16 * side * side, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class NoInputSize(nn.Module):
    """Right at 28×28, but its constructor takes no input size."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = SequentialBN()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def test_batchnorm_placement_right_answers_pass(capsys) -> None:
    passes(check_batchnorm_placement, make_cnn(), "2.1", capsys)
    passes(check_batchnorm_placement, SequentialBN, "2.1", capsys)


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (make_cnn(order="conv-relu-bn"), "conv → BatchNorm2d → ReLU"),
        (make_cnn(bn2_features=32), "num_features"),
        (make_cnn(use_bn2=False), "does not go to a BatchNorm2d"),
        (make_cnn(typed_flatten=True), "instead of typing 64 * 7 * 7"),
        (NoInputSize, "give __init__ an `input_size: int = 28` argument"),
    ],
    ids=["bn-after-relu", "wrong-num-features", "second-bn-unused", "typed-flatten", "no-size"],
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


# --- 2.2: BatchNorm2d's forward in both modes ---------------------------------------------------

SHAPE = (1, -1, 1, 1)


def right_bn(x, gamma, beta, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    if training:
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        n = x.numel() / x.shape[1]
        new_mean = (1 - momentum) * running_mean + momentum * mean
        new_var = (1 - momentum) * running_var + momentum * var * n / (n - 1)
    else:
        mean, var, new_mean, new_var = running_mean, running_var, running_mean, running_var
    x_hat = (x - mean.view(SHAPE)) / torch.sqrt(var.view(SHAPE) + eps)
    return gamma.view(SHAPE) * x_hat + beta.view(SHAPE), new_mean, new_var


def var_mean_bn(x, gamma, beta, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    """torch.var_mean and torch.lerp: plain tensor operations, also right."""
    if not training:
        x_hat = (x - running_mean[:, None, None]) * torch.rsqrt(running_var[:, None, None] + eps)
        return gamma[:, None, None] * x_hat + beta[:, None, None], running_mean, running_var
    var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
    n = x.numel() // x.shape[1]
    y = gamma[:, None, None] * (x - mean[:, None, None]) * torch.rsqrt(var[:, None, None] + eps)
    new_mean = torch.lerp(running_mean, mean, momentum)
    return y + beta[:, None, None], new_mean, torch.lerp(running_var, var * n / (n - 1), momentum)


def unbiased_normalise(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    _, m, v = right_bn(x, gamma, beta, rm, rv, training, momentum, eps)
    mean, var = x.mean(dim=(0, 2, 3), keepdim=True), x.var(dim=(0, 2, 3), keepdim=True)
    return gamma.view(SHAPE) * (x - mean) / torch.sqrt(var + eps) + beta.view(SHAPE), m, v


def biased_running_var(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    y, m, _ = right_bn(x, gamma, beta, rm, rv, training, momentum, eps)
    return y, m, (1 - momentum) * rv + momentum * x.var(dim=(0, 2, 3), unbiased=False)


def momentum_reversed(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    y, _, v = right_bn(x, gamma, beta, rm, rv, training, momentum, eps)
    return y, momentum * rm + (1 - momentum) * x.mean(dim=(0, 2, 3)), v


def per_image(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    _, m, v = right_bn(x, gamma, beta, rm, rv, training, momentum, eps)
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), keepdim=True, unbiased=False)
    return gamma.view(SHAPE) * (x - mean) / torch.sqrt(var + eps) + beta.view(SHAPE), m, v


def no_affine(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    _, m, v = right_bn(x, gamma, beta, rm, rv, training, momentum, eps)
    ones, zeros = torch.ones_like(gamma), torch.zeros_like(beta)
    return right_bn(x, ones, zeros, rm, rv, training, momentum, eps)[0], m, v


def batch_stats_in_eval(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    y, m, v = right_bn(x, gamma, beta, rm, rv, True, momentum, eps)
    return (y, m, v) if training else (y, rm, rv)


def updates_in_eval(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    y = right_bn(x, gamma, beta, rm, rv, training, momentum, eps)[0]
    return (y, *right_bn(x, gamma, beta, rm, rv, True, momentum, eps)[1:])


def in_place_update(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    y, m, v = right_bn(x, gamma, beta, rm, rv, training, momentum, eps)
    rm.copy_(m)
    rv.copy_(v)
    return y, rm, rv


def fixed_momentum(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    return right_bn(x, gamma, beta, rm, rv, training, 0.1, eps)


def test_batchnorm_fn_right_answers_pass(capsys) -> None:
    passes(check_batchnorm_fn, right_bn, "2.2", capsys)
    passes(check_batchnorm_fn, var_mean_bn, "2.2", capsys)


@pytest.mark.parametrize(
    ("fn", "hint"),
    [
        (unbiased_normalise, "biased variance"),
        (biased_running_var, "*unbiased* batch variance"),
        (momentum_reversed, "momentum weighs the batch"),
        (per_image, "per channel, over the batch"),
        (no_affine, "gamma * x_hat + beta"),
        (batch_stats_in_eval, "in eval mode normalise with running_mean"),
        (updates_in_eval, "in eval mode the running statistics stay as they are"),
        (in_place_update, "changed its argument(s) running_mean, running_var in place"),
        (fixed_momentum, "(1 - momentum) * old + momentum"),
        (lambda x, g, b, m, v, *a: (x, m, v), "per channel"),
        (lambda x, g, b, m, v, *a: x, "three tensors"),
    ],
    ids=[
        "unbiased-normalise",
        "biased-running-var",
        "momentum-reversed",
        "per-image",
        "no-affine",
        "batch-stats-in-eval",
        "updates-in-eval",
        "in-place",
        "fixed-momentum",
        "identity",
        "one-output",
    ],
)
def test_batchnorm_fn_wrong_answers_fail(fn, hint: str, capsys) -> None:
    fails(check_batchnorm_fn, fn, hint, "2.2", capsys)


def functional_shortcut(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    rm, rv = rm.clone(), rv.clone()
    y = F.batch_norm(x, rm, rv, gamma, beta, training=training, momentum=momentum, eps=eps)
    return y, rm, rv


def module_shortcut(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    layer = nn.BatchNorm2d(x.shape[1], eps=eps, momentum=momentum)
    with torch.no_grad():
        layer.weight.copy_(gamma)
        layer.bias.copy_(beta)
        layer.running_mean.copy_(rm)
        layer.running_var.copy_(rv)
        y = layer.train(training)(x)
    return y, layer.running_mean.clone(), layer.running_var.clone()


def torch_shortcut(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    rm, rv = rm.clone(), rv.clone()
    return torch.batch_norm(x, gamma, beta, rm, rv, training, momentum, eps, False), rm, rv


def instance_norm_shortcut(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    """Instance norm of the batch seen as one image: batch norm's output, through another door."""
    if not training:
        return right_bn(x, gamma, beta, rm, rv, training, momentum, eps)
    whole = x.transpose(0, 1).reshape(1, x.shape[1], -1)
    y = F.instance_norm(whole, weight=gamma, bias=beta, eps=eps)
    y = y.reshape(x.shape[1], x.shape[0], *x.shape[2:]).transpose(0, 1)
    return y, *right_bn(x, gamma, beta, rm, rv, training, momentum, eps)[1:]


def alias_shortcut(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    rm, rv = rm.clone(), rv.clone()
    return imported_batch_norm(x, rm, rv, gamma, beta, training, momentum, eps), rm, rv


@pytest.mark.parametrize(
    ("fn", "label"),
    [
        (functional_shortcut, "torch.nn.functional.batch_norm"),
        (module_shortcut, "torch.nn.BatchNorm2d"),
        (torch_shortcut, "torch.batch_norm"),
        (instance_norm_shortcut, "torch.nn.functional.instance_norm"),
        (alias_shortcut, "imported_batch_norm"),
    ],
    ids=["F.batch_norm", "nn.BatchNorm2d", "torch.batch_norm", "F.instance_norm", "alias"],
)
def test_batchnorm_fn_library_shortcut_refused(fn, label: str, capsys) -> None:
    originals = (F.batch_norm, nn.BatchNorm2d, torch.batch_norm, F.instance_norm)
    message = fails(
        check_batchnorm_fn, fn, "write BatchNorm's forward pass yourself", "2.2", capsys
    )
    assert label in message, message
    assert (F.batch_norm, nn.BatchNorm2d, torch.batch_norm, F.instance_norm) == originals
    assert imported_batch_norm is F.batch_norm  # the alias is restored too


def test_batchnorm_fn_passes_not_implemented_through() -> None:
    def blank(*_args):
        raise NotImplementedError("Exercise 2.2: write BatchNorm")

    with pytest.raises(NotImplementedError):
        check_batchnorm_fn(blank)


# --- 2.3: the experiment ------------------------------------------------------------------------

LR = 1e-2
CLEAR = {"batch": {0: 0.80, 1: 0.81}, "none": {0: 0.60, 1: 0.62}}  # BatchNorm helps, beyond noise
NOISY = {"batch": {0: 0.80, 1: 0.70}, "none": {0: 0.75, 1: 0.72}}  # ranges overlap


def make_run(table, lr: float = LR, bn_arm: str | None = "batch"):
    """A stand-in for the learner's run: one real optimiser step of a tiny model (with
    BatchNorm2d in ``bn_arm``), then the accuracy from ``table``."""

    def run(arm: str, seed: int) -> float:
        torch.manual_seed(seed)
        norm = nn.BatchNorm2d(2) if arm == bn_arm else nn.Identity()
        model = nn.Sequential(nn.Conv2d(1, 2, 3), norm)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        model(torch.randn(2, 1, 5, 5)).square().mean().backward()
        optimizer.step()
        return table[arm][seed]

    return run


def unseeded_run(arm: str, seed: int) -> float:
    return make_run(CLEAR)(arm, seed) + float(torch.rand(()).item()) * 0.01 * (seed + 1)


def experiment(run, reported, verdict: str) -> None:
    check_lr_experiment(run, reported, verdict, lr=LR)


def test_lr_experiment_right_answers_pass(capsys) -> None:
    passes(lambda a: experiment(*a), (make_run(CLEAR), CLEAR, VERDICTS[0]), "2.3", capsys)
    passes(lambda a: experiment(*a), (make_run(NOISY), NOISY, VERDICTS[2]), "2.3", capsys)


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        ((make_run(NOISY), NOISY, VERDICTS[0]), "within noise"),
        ((make_run(CLEAR), CLEAR, VERDICTS[2]), "this difference is real"),
        ((make_run(CLEAR), CLEAR, "BN is better"), "one of the three strings"),
        (
            (make_run(CLEAR), {"batch": {0: 0.80}, "none": {0: 0.60}}, VERDICTS[0]),
            "one seed says nothing",
        ),
        (
            (make_run(CLEAR), {"batch": {0: 0.85, 1: 0.86}, "none": CLEAR["none"]}, VERDICTS[0]),
            "report the numbers of your runs",
        ),
        ((unseeded_run, CLEAR, VERDICTS[0]), "report the numbers of your runs"),
        ((make_run(CLEAR, lr=LR / 10), CLEAR, VERDICTS[0]), "10× larger learning rate"),
        ((make_run(CLEAR, bn_arm=None), CLEAR, VERDICTS[0]), "'batch' has BatchNorm"),
    ],
    ids=[
        "noise-called-a-win",
        "real-difference-called-noise",
        "free-text-verdict",
        "one-seed",
        "typed-numbers",
        "unseeded-run",
        "base-learning-rate",
        "no-batchnorm-in-run",
    ],
)
def test_lr_experiment_wrong_answers_fail(answer, hint: str, capsys) -> None:
    fails(lambda a: experiment(*a), answer, hint, "2.3", capsys)
