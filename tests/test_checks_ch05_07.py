"""The chapter 5–7 ``check_*`` helpers pass right answers and fail the typical mistakes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from course_utils.checks import (
    check_filter_display,
    check_freeze_bn_block,
    check_freeze_conv1,
    check_hook_capture,
    check_png_dataset,
)
from course_utils.data import standard_transform
from course_utils.inspection import filters_for_display
from course_utils.pngfolder import BadImageError


def _fails(check: Callable[[object], None], answer: object, hint: str, capsys) -> None:
    with pytest.raises(AssertionError) as err:
        check(answer)
    assert hint in str(err.value)
    assert "❌ Exercise" in capsys.readouterr().out


# --- 5.1 ---------------------------------------------------------------------------------------


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


# --- 5.2 ---------------------------------------------------------------------------------------


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


# --- 6.1 ---------------------------------------------------------------------------------------


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


# --- 6.2 ---------------------------------------------------------------------------------------


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


# --- 7.1 ---------------------------------------------------------------------------------------


class _Base(torch.utils.data.Dataset):
    def __init__(self, root: Path) -> None:
        self.classes = sorted(p.name for p in Path(root).iterdir() if p.is_dir())
        self.samples = [
            (p, c)
            for c, name in enumerate(self.classes)
            for p in sorted((root / name).glob("*.png"))
        ]
        self.transform = standard_transform()

    def __len__(self) -> int:
        return len(self.samples)


class _Right(_Base):
    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        try:
            with Image.open(path) as img:
                image = img.convert("L")
        except OSError as err:
            raise BadImageError(f"{path}: {err}") from err
        return self.transform(image), label


class _NoNames(_Base):
    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        with Image.open(path) as img:
            return self.transform(img.convert("L")), label


class _NotNormalised(_Right):
    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = super().__getitem__(i)
        return x * 0.353 + 0.286, y


class _WrongLabel(_Right):
    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = super().__getitem__(i)
        return x, (y + 1) % 3


class _NoChannel(_Right):
    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = super().__getitem__(i)
        return x[0], y


class _ShortLen(_Right):
    def __len__(self) -> int:
        return len(self.samples) - 1


def test_png_dataset_right_answer_passes(capsys: pytest.CaptureFixture[str]) -> None:
    check_png_dataset(_Right)
    from course_utils.pngfolder import PNGFolder

    check_png_dataset(lambda root: PNGFolder(root, on_error="raise"))
    assert capsys.readouterr().out.count("✅ Exercise 7.1:") == 2


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (_NoNames, "names the file"),
        (_NotNormalised, "normalise"),
        (_WrongLabel, "label stored"),
        (_NoChannel, "expected a tensor of shape"),
        (_ShortLen, "len(self.samples)"),
    ],
)
def test_png_dataset_wrong_answers_fail(answer, hint, capsys) -> None:
    _fails(check_png_dataset, answer, hint, capsys)
