"""Chapter 2 ``check_*`` helpers: the right answer passes, each typical mistake fails."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from checks_support import fails, passes
from torch import nn

from course_utils.checks.ch02 import check_batchnorm_fn, check_batchnorm_placement


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
