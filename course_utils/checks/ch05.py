"""Checks of the chapter 5 exercises: filter display, a forward hook, a hook recorder."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .. import hooks, inspection
from ..hooks import capture_activations, hook_count
from ..inspection import filters_for_display
from ._common import aliases, call, failure, passed, refuse, small_model

__all__ = ["check_filter_display", "check_hook_capture", "check_hook_recorder"]

_BAD_INPUT = torch.zeros(1, 1, 20, 20)  # FashionCNN raises ValueError on a 20×20 input


def _error_path(ex: str, model: nn.Module, run: Callable[[], Any], hints: tuple[str, str]) -> None:
    """``run()`` makes ``model`` raise a ValueError: no hook may stay, the error must propagate."""
    try:
        run()
        propagated = False
    except ValueError:
        propagated = True
    if hook_count(model):
        raise failure(ex, f"{hook_count(model)} hook(s) left after a forward error", hints[0])
    if not propagated:
        raise failure(ex, "the error of a failing forward pass was swallowed", hints[1])


def _compare(ex: str, what: str, got: Any, ref: torch.Tensor) -> None:
    """``got`` must be a detached tensor equal to the layer output ``ref``."""
    shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
    if shape != tuple(ref.shape):
        hint = "keep the hook's `output` (its third argument, not its input) for the whole batch."
        raise failure(ex, f"{what} is {shape}, expected shape {tuple(ref.shape)}", hint)
    if got.requires_grad:
        raise failure(ex, f"{what} still requires grad", "store output.detach().")
    if not torch.allclose(got, ref, atol=1e-5):
        hint = "keep the hook's output (its third argument), not its input."
        raise failure(ex, f"{what} differs from the layer's output", hint)


def check_filter_display(fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Exercise 5.1: ``fn(conv1.weight)`` scales each filter to [0, 1] on its own (min-max), on
    a real conv1 weight and on one whose filters differ in scale by 100×."""
    ex = "5.1"
    weight = small_model().conv1.weight.detach().clone()
    scaled = weight * torch.logspace(-1, 1, len(weight))[:, None, None, None]
    for case, w in (("conv1 weight", weight), ("filters of very different scales", scaled)):
        original = w.clone()
        out = call(ex, f"fn on the {case}", fn, w, hint="work on a detached copy.")
        if not torch.equal(w, original):
            raise failure(ex, "changed the weight in place", "compute on w.detach().clone().")
        if not isinstance(out, torch.Tensor):
            raise failure(ex, f"returned {type(out).__name__}", "return a torch.Tensor.")
        if out.shape != (32, 3, 3):
            hint = "drop the input-channel dimension (weight[:, 0]) so each filter is a 3×3 image."
            raise failure(ex, f"shape {tuple(out.shape)}, expected (32, 3, 3)", hint)
        if torch.allclose(out.detach().float(), filters_for_display(w), atol=1e-5):
            continue
        if out.min() < -1e-6 or out.max() > 1 + 1e-6:
            hint = "every value must lie in [0, 1]: subtract the minimum, divide by max − min."
        elif torch.allclose(out.float(), (w[:, 0] - w.min()) / (w.max() - w.min()), atol=1e-5):
            hint = "you scaled all filters together: scale each by its own min and max."
        else:
            hint = "filter i should be (w_i − min(w_i)) / (max(w_i) − min(w_i))."
        raise failure(ex, f"wrong values on the {case}", hint)
    passed(ex, "each of the 32 filters is min-max scaled to [0, 1] on its own (2 weights)")


def check_hook_capture(fn: Callable[[nn.Module, str, torch.Tensor], torch.Tensor]) -> None:
    """Exercise 5.2: ``fn(model, name, x)`` returns submodule ``name``'s output for ``x`` via a
    forward hook, and removes the hook, also when the forward pass raises."""
    ex, model = "5.2", small_model().eval()
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with capture_activations(model, ["conv1", "conv2", "act2"]) as expected, torch.no_grad():
        model(x)
    for name, (ref,) in expected.items():
        out = call(ex, f"fn(model, {name!r}, x)", fn, model, name, x, hint="use named_modules.")
        if hook_count(model):
            hint = "keep the handle of register_forward_hook; call handle.remove() in a finally:."
            raise failure(ex, f"left {hook_count(model)} hook(s) on {name}", hint)
        _compare(ex, f"the output for {name!r}", out, ref)
    hints = ("remove the hook in a try/finally (or a context manager) so errors cannot skip it.",
             "let the exception propagate; only make sure the hook is removed.")  # fmt: skip
    _error_path(ex, model, lambda: fn(model, "conv1", _BAD_INPUT), hints)
    passed(ex, "conv1, conv2 and act2 outputs match the layers; hooks removed, even on error")


def _record(recorder: Any, model: nn.Module, x: torch.Tensor, passes: int = 1) -> Any:
    """Run ``model`` on ``x`` ``passes`` times inside ``with recorder``; what ``__enter__`` gave."""
    with recorder as rec:
        for _ in range(passes):
            model(x)
    return rec


def check_hook_recorder(recorder_cls: Callable[..., Any]) -> None:
    """Exercise 5.3: ``with recorder_cls(model, names) as rec:`` fills ``rec.outputs[name]`` with
    a detached clone per call and leaves no hook, also when the block raises (which propagates)."""
    ex, model, names = "5.3", small_model().eval(), ["conv1", "pool"]
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with capture_activations(model, names) as expected, torch.no_grad():
        model(x)  # pool is called twice per pass
    api = "__enter__ registers one hook per name and returns self; outputs[name] is a list."
    shortcuts = [(hooks, "capture_activations"), (inspection, "capture_activations")]
    shortcuts += [(inspection, "stage_activations")]
    with refuse(ex, [*shortcuts, *aliases([recorder_cls], shortcuts)], "the recorder"):
        cls = getattr(recorder_cls, "__name__", type(recorder_cls).__name__)
        recorder = call(ex, f"{cls}(model, {names})", recorder_cls, model, names, hint=api)
        if not all(hasattr(type(recorder), m) for m in ("__enter__", "__exit__")):
            hint = "define both __enter__ (register the hooks, return self) and __exit__."
            raise failure(ex, f"{cls}(...) is not a context manager", hint)
        with recorder as rec:
            inside = hook_count(model)
            model(x)  # with autograd on: the recorder must detach
        outputs = getattr(rec, "outputs", None)
        if not isinstance(outputs, dict):
            raise failure(ex, f"`rec.outputs` is {type(outputs).__name__}, not a dict", api)
        if inside != len(names) or hook_count(model):
            hint = "register one hook per name in __enter__; call handle.remove() in __exit__."
            problem = f"{inside} hook(s) inside the `with`, {hook_count(model)} after it"
            raise failure(ex, f"{problem}, expected {len(names)} and 0", hint)
        for name, refs in expected.items():
            got = outputs.get(name)
            if not isinstance(got, list) or len(got) != len(refs):
                n = len(got) if isinstance(got, list) else type(got).__name__
                hint = "append the hook's output to a list on every call; do not overwrite it."
                raise failure(ex, f"outputs[{name!r}] has {n} entries, not {len(refs)}", hint)
            for k, (out, ref) in enumerate(zip(got, refs, strict=True)):
                _compare(ex, f"outputs[{name!r}][{k}]", out, ref)
        with torch.no_grad():
            again = _record(recorder_cls(model, ["conv1"]), model, x, passes=2).outputs["conv1"]
            if len(again) != 2:
                hint = "create outputs in __init__ or __enter__, not as a class attribute."
                raise failure(ex, f"a fresh recorder over 2 passes holds {len(again)}", hint)
            net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True))
            raw, kept = net[0](x), _record(recorder_cls(net, ["0"]), net, x).outputs["0"][0]
        if not torch.equal(kept, raw):
            hint = "store output.detach().clone(): the next in-place layer overwrites a reference."
            raise failure(ex, "the recorded conv output was changed by an in-place ReLU", hint)
        hints = ("__exit__ runs also when the block raises: remove the handles there.",
                 "__exit__ must return None/False, so that the exception carries on.")  # fmt: skip
        _error_path(
            ex, model, lambda: _record(recorder_cls(model, names), model, _BAD_INPUT), hints
        )
    passed(
        ex,
        "conv1 and pool (twice per pass) recorded exactly, detached clones, fresh per "
        "recorder; zero hooks left, also after an error",
    )
