"""Chapter 5 ``check_*`` helpers: the right answer passes, each typical mistake fails."""

from __future__ import annotations

import pytest
import torch
from checks_support import fails, passes
from torch import nn

from course_utils import hooks, inspection
from course_utils.checks._common import ShortcutRefused
from course_utils.checks.ch05 import (
    check_filter_display,
    check_hook_capture,
    check_hook_recorder,
)
from course_utils.inspection import filters_for_display


def test_filter_display_right_answer_passes(capsys: pytest.CaptureFixture[str]) -> None:
    passes(check_filter_display, filters_for_display, "5.1", capsys)


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
    ids=["global-scale", "not-scaled", "channel-dim-kept", "numpy", "inverted", "in-place"],
)
def test_filter_display_wrong_answers_fail(answer, hint, capsys) -> None:
    fails(check_filter_display, answer, hint, "5.1", capsys)


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
    passes(check_hook_capture, _capture, "5.2", capsys)


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
    ids=[
        "never-removed",
        "removed-without-finally",
        "input-not-output",
        "swallows-error",
        "not-detached",
    ],
)
def test_hook_capture_wrong_answers_fail(answer, hint, capsys) -> None:
    fails(check_hook_capture, answer, hint, "5.2", capsys)


# --- 5.3: the recorder ---------------------------------------------------------------------


class _Recorder:
    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.model, self.names = model, list(names)

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            self.outputs[name].append(output.detach().clone())

        return hook

    def __enter__(self) -> _Recorder:
        modules = dict(self.model.named_modules())
        self.outputs = {name: [] for name in self.names}
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in self.names]
        return self

    def __exit__(self, *_exc: object) -> None:
        for handle in self.handles:
            handle.remove()


def test_hook_recorder_right_answer_passes(capsys: pytest.CaptureFixture[str]) -> None:
    passes(check_hook_recorder, _Recorder, "5.3", capsys)


class _NotAContextManager:
    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.outputs = {name: [] for name in names}


class _NeverRemoves(_Recorder):
    def __exit__(self, *_exc: object) -> None:
        pass


class _KeepsLast(_Recorder):
    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            self.outputs[name] = [output.detach().clone()]

        return hook


class _NoClone(_Recorder):
    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            self.outputs[name].append(output.detach())

        return hook


class _NoDetach(_Recorder):
    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            self.outputs[name].append(output.clone())

        return hook


class _Swallows(_Recorder):
    def __exit__(self, *_exc: object) -> bool:
        super().__exit__()
        return True


class _SharedOutputs(_Recorder):
    shared: dict = {}

    def __enter__(self) -> _SharedOutputs:
        for name in self.names:
            self.shared.setdefault(name, [])
        self.outputs = self.shared
        modules = dict(self.model.named_modules())
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in self.names]
        return self


class _RemovesOnlyOnSuccess(_Recorder):
    def __exit__(self, kind: object, *_rest: object) -> None:
        if kind is None:
            super().__exit__()


class _LibraryRecorder:
    """The shortcut: the package's recorder under the learner's name."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.context = hooks.capture_activations(model, names)

    def __enter__(self) -> _LibraryRecorder:
        self.outputs = self.context.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.context.__exit__(*exc)


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (_NeverRemoves, "handle.remove() in __exit__"),
        (_KeepsLast, "do not overwrite it"),
        (_NoClone, "clone"),
        (_NoDetach, "output.detach()"),
        (_Swallows, "return None/False"),
        (_SharedOutputs, "class attribute"),
        (_RemovesOnlyOnSuccess, "also when the block raises"),
        (_LibraryRecorder, "write the recorder yourself"),
        (_NotAContextManager, "define both __enter__"),
    ],
    ids=[
        "never-removes",
        "overwrites-instead-of-appending",
        "no-clone-inplace-relu",
        "not-detached",
        "swallows-error",
        "outputs-shared-between-recorders",
        "removes-only-on-success",
        "shortcut-capture_activations",
        "not-a-context-manager",
    ],
)
def test_hook_recorder_wrong_answers_fail(answer, hint, capsys) -> None:
    fails(check_hook_recorder, answer, hint, "5.3", capsys)


def test_hook_recorder_refuses_aliases_and_restores_them(capsys) -> None:
    original = hooks.capture_activations
    namespace = {"record": hooks.capture_activations, "stages": inspection.stage_activations}
    exec(  # a notebook that imported the recorder under another name
        "class Alias(_Base):\n"
        "    def __enter__(self):\n"
        "        self.ctx = record(self.model, self.names)\n"
        "        self.outputs = self.ctx.__enter__()\n"
        "        return self\n",
        {**namespace, "_Base": _Recorder},
        namespace,
    )
    alias = namespace["Alias"]
    with pytest.raises(ShortcutRefused):
        check_hook_recorder(alias)
    assert hooks.capture_activations is original
    assert inspection.capture_activations is original
    assert alias.__enter__.__globals__["record"] is original
    capsys.readouterr()
