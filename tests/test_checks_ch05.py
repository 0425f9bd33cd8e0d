"""Chapter 5 ``check_*`` helpers: the right answer passes, each typical mistake fails."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from course_utils.checks.ch05 import check_filter_display, check_hook_capture
from course_utils.inspection import filters_for_display


def _fails(check: Callable[[object], None], answer: object, hint: str, capsys) -> None:
    with pytest.raises(AssertionError) as err:
        check(answer)
    assert hint in str(err.value)
    assert "❌ Exercise" in capsys.readouterr().out


def test_filter_display_right_answer_passes(capsys: pytest.CaptureFixture[str]) -> None:
    check_filter_display(filters_for_display)
    assert capsys.readouterr().out.startswith("✅ Exercise 5.1:")


def _global_scale(w: torch.Tensor) -> torch.Tensor:
    w = w.detach()[:, 0]
    return (w - w.min()) / (w.max() - w.min())


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (_global_scale, "scaled all filters together"),
        (lambda w: w.detach()[:, 0], "[0, 1]"),  # not scaled at all
        (lambda w: filters_for_display(w)[:, None], "drop the input-channel"),
        (lambda w: filters_for_display(w).numpy(), "torch.Tensor"),
        (lambda w: 1 - filters_for_display(w), "(w_i − min(w_i))"),  # inverted
        (lambda w: w.sub_(w.min()).detach()[:, 0], "in place"),
    ],
)
def test_filter_display_wrong_answers_fail(answer, hint, capsys) -> None:
    _fails(check_filter_display, answer, hint, capsys)


def test_filter_display_passes_not_implemented_through() -> None:
    def blank(w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("Exercise 5.1")

    with pytest.raises(NotImplementedError):
        check_filter_display(blank)


def _capture(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = dict(model.named_modules())[name].register_forward_hook(
        lambda _m, _i, out: seen.append(out.detach())
    )
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


def test_hook_capture_right_answer_passes(capsys: pytest.CaptureFixture[str]) -> None:
    check_hook_capture(_capture)
    assert capsys.readouterr().out.startswith("✅ Exercise 5.2:")


def _no_remove(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    seen = []
    dict(model.named_modules())[name].register_forward_hook(
        lambda _m, _i, out: seen.append(out.detach())
    )
    model(x)
    return seen[0]


def _remove_without_finally(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = dict(model.named_modules())[name].register_forward_hook(
        lambda _m, _i, out: seen.append(out.detach())
    )
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]


def _input_not_output(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = dict(model.named_modules())[name].register_forward_hook(
        lambda _m, inputs, _out: seen.append(inputs[0].detach())
    )
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


def _swallows(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor | None:
    try:
        return _capture(model, name, x)
    except ValueError:
        return None


def _not_detached(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = dict(model.named_modules())[name].register_forward_hook(
        lambda _m, _i, out: seen.append(out)
    )
    try:
        model(x)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (_no_remove, "handle.remove()"),
        (_remove_without_finally, "try/finally"),
        (_input_not_output, "not its input"),
        (_swallows, "let the exception propagate"),
        (_not_detached, "output.detach()"),
    ],
)
def test_hook_capture_wrong_answers_fail(answer, hint, capsys) -> None:
    _fails(check_hook_capture, answer, hint, capsys)
