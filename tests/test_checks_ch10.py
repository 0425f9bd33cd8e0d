"""Chapter 10 ``check_*`` helpers: the right answer passes, each typical mistake fails."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from course_utils.cam import gradcam_from, normalize_cams
from course_utils.checks.ch10 import check_gradcam_weighting, check_normalize_cams


def test_gradcam_weighting_right_answer_passes(capsys: pytest.CaptureFixture[str]) -> None:
    check_gradcam_weighting(gradcam_from)
    assert capsys.readouterr().out.startswith("✅ Exercise 10.1:")


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda a, g: (g.mean((2, 3), keepdim=True) * a).sum(1), "ReLU"),
        (lambda a, g: F.relu((g.sum((2, 3), keepdim=True) * a).sum(1)), "mean"),
        (lambda a, g: F.relu((a.mean((2, 3), keepdim=True) * g).sum(1)), "gradient"),
        (lambda a, g: F.relu(g.mean((2, 3), keepdim=True) * a), "shape"),
        (lambda a, g: F.relu((g.mean(1, keepdim=True) * a).sum(1)), "gradient"),
    ],
    ids=["no relu", "sum not mean", "swapped", "no channel sum", "channel mean"],
)
def test_gradcam_weighting_wrong_answers_fail(wrong, hint: str) -> None:
    with pytest.raises(AssertionError, match=hint):
        check_gradcam_weighting(wrong)


def test_normalize_right_answer_passes(capsys: pytest.CaptureFixture[str]) -> None:
    check_normalize_cams(normalize_cams)
    assert capsys.readouterr().out.startswith("✅ Exercise 10.2:")


def per_batch(c: torch.Tensor) -> torch.Tensor:
    return (c - c.min()) / (c.max() - c.min())


def no_min(c: torch.Tensor) -> torch.Tensor:
    return c / (c.flatten(1).amax(1).view(-1, 1, 1) + 1e-8)


def no_eps(c: torch.Tensor) -> torch.Tensor:
    low = c.flatten(1).amin(1).view(-1, 1, 1)
    return (c - low) / (c.flatten(1).amax(1).view(-1, 1, 1) - low)


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (per_batch, "own minimum"),
        (no_min, "minimum first"),
        (no_eps, "eps"),
        (torch.sigmoid, "per map"),
    ],
)
def test_normalize_wrong_answers_fail(wrong, hint: str) -> None:
    with pytest.raises(AssertionError, match=hint):
        check_normalize_cams(wrong)
