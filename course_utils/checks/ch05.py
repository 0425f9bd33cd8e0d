"""Checks of the chapter 5 exercises: filter display, a forward hook, a hook recorder."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._common import (
    aliases,
    call,
    failure,
    passed,
    refuse,
    small_model,
)

__all__ = [
    "check_filter_display",
    "check_hook_capture",
    "check_hook_recorder",
]


# --- 5.1 ---------------------------------------------------------------------------------------


def check_filter_display(fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Exercise 5.1: ``fn(conv1.weight)`` scales each filter to [0, 1] on its own (min-max).

    Verified on a real ``[32, 1, 3, 3]`` conv1 weight and on a weight whose filters differ in
    scale by 100×, against a reference computed here.
    """
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
        if tuple(out.shape) != (32, 3, 3):
            raise failure(
                ex,
                f"shape {tuple(out.shape)}, expected (32, 3, 3)",
                "drop the input-channel dimension (weight[:, 0]) so each filter is a 3×3 image.",
            )
        flat = out.detach().float().flatten(1)
        ref = w[:, 0].flatten(1)
        ref = (ref - ref.min(1, keepdim=True).values) / (
            ref.max(1, keepdim=True).values - ref.min(1, keepdim=True).values
        )
        if torch.allclose(flat, ref.view_as(flat), atol=1e-5):
            continue
        if flat.min() < -1e-6 or flat.max() > 1 + 1e-6:
            hint = "every value must lie in [0, 1]: subtract the minimum, divide by max − min."
        elif torch.allclose(
            flat, ((w - w.min()) / (w.max() - w.min()))[:, 0].flatten(1), atol=1e-5
        ):
            hint = (
                "you scaled all filters together (one min and max for the whole tensor); scale "
                "each filter by its own min and max (reduce over dim 1 of weight.flatten(1))."
            )
        else:
            hint = "filter i should be (w_i − min(w_i)) / (max(w_i) − min(w_i))."
        raise failure(ex, f"wrong values on the {case}", hint)
    passed(ex, "each of the 32 filters is min-max scaled to [0, 1] on its own (2 weights)")


# --- 5.2 ---------------------------------------------------------------------------------------


def check_hook_capture(fn: Callable[[nn.Module, str, torch.Tensor], torch.Tensor]) -> None:
    """Exercise 5.2: ``fn(model, name, x)`` returns submodule ``name``'s output for ``x`` via a
    forward hook, and removes the hook, also when the forward pass raises."""
    ex = "5.2"
    model = small_model().eval()
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = {
            "conv1": model.conv1(x),
            "conv2": model.conv2(model.pool(model.act1(model.conv1(x)))),
        }
    expected["act2"] = model.act2(expected["conv2"])
    for name, ref in expected.items():
        out = call(ex, f"fn(model, {name!r}, x)", fn, model, name, x, hint="use named_modules.")
        module = dict(model.named_modules())[name]
        if module._forward_hooks:
            raise failure(
                ex,
                f"left {len(module._forward_hooks)} hook(s) on {name}",
                "keep the handle from register_forward_hook and call handle.remove() in a "
                "finally: block.",
            )
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(ref.shape):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise failure(
                ex,
                f"for {name!r} got {shape}, expected shape {tuple(ref.shape)}",
                "return the hook's `output` (third argument, not its input) for the whole batch.",
            )
        if out.requires_grad:
            raise failure(ex, "the activation still requires grad", "store output.detach().")
        if not torch.allclose(out, ref, atol=1e-5):
            raise failure(
                ex,
                f"values for {name!r} differ from the layer's output",
                "store the hook's output (the third argument), not its input.",
            )
    with _CatchValueError() as caught:
        fn(model, "conv1", torch.zeros(1, 1, 20, 20))  # FashionCNN refuses 20×20 inputs
    if model.conv1._forward_hooks:
        raise failure(
            ex,
            "after a forward pass that raised, the hook was left on conv1",
            "remove the hook in a try/finally (or a context manager) so errors cannot skip it.",
        )
    if not caught:
        raise failure(
            ex,
            "the error of a failing forward pass was swallowed",
            "let the exception propagate; only make sure the hook is removed.",
        )
    passed(ex, "conv1, conv2 and act2 outputs match the layers; hooks removed, even on error")


class _CatchValueError:
    """Swallow a ``ValueError`` raised in the block and remember it (truthy when caught)."""

    def __init__(self) -> None:
        self.caught = False

    def __enter__(self) -> _CatchValueError:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        self.caught = kind is not None and issubclass(kind, ValueError)
        return self.caught

    def __bool__(self) -> bool:
        return self.caught


# --- 5.3 ---------------------------------------------------------------------------------------


def _recorder_shortcuts() -> list[tuple[object, str]]:
    """The package's own recorders, under every module name a notebook can reach them by."""
    from .. import hooks, inspection

    return [
        (hooks, "capture_activations"),
        (inspection, "capture_activations"),
        (inspection, "stage_activations"),
    ]


def _forward_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def check_hook_recorder(recorder_cls: Callable[..., Any]) -> None:
    """Exercise 5.3: ``recorder_cls(model, names)`` is a context manager whose ``__enter__``
    returns an object with ``.outputs = {name: [tensor per call]}``.

    Verified: outputs equal the layers' (``pool``, called twice per pass, records twice; two
    passes record twice as many), detached clones (an in-place ReLU after the layer must not
    change them), a fresh recorder starts empty, no hook left after the ``with`` (also when
    the block raises, and the error propagates). The package's recorders are switched off.
    """
    ex = "5.3"
    model = small_model().eval()
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        conv1 = model.conv1(x)
        pool1 = model.pool(model.act1(conv1))
        pool2 = model.pool(model.act2(model.conv2(pool1)))
    expected = {"conv1": [conv1], "pool": [pool1, pool2]}
    names = list(expected)
    hint_api = "__enter__ registers one hook per name and returns self; outputs[name] is a list."
    shortcuts = _recorder_shortcuts()
    with refuse(ex, [*shortcuts, *aliases([recorder_cls], shortcuts)], "the recorder"):
        recorder = call(
            ex, f"{_name(recorder_cls)}(model, {names})", recorder_cls, model, names, hint=hint_api
        )
        if not all(hasattr(type(recorder), m) for m in ("__enter__", "__exit__")):
            raise failure(
                ex,
                f"{_name(recorder_cls)}(...) is not a context manager",
                "define both __enter__ (register the hooks, return self) and __exit__ "
                "(remove them).",
            )
        with recorder as rec:
            hooks_inside = _forward_hooks(model)
            model(x)  # with autograd on: the recorder must detach
        outputs = getattr(rec, "outputs", None)
        if not isinstance(outputs, dict):
            raise failure(ex, f"`rec.outputs` is {type(outputs).__name__}, not a dict", hint_api)
        if hooks_inside != len(names):
            raise failure(
                ex,
                f"{hooks_inside} hook(s) on the model inside the `with`, expected {len(names)}",
                "register exactly one forward hook per name in __enter__.",
            )
        left = _forward_hooks(model)
        if left:
            raise failure(
                ex,
                f"{left} hook(s) left on the model after the `with` block",
                "keep every handle and call handle.remove() in __exit__.",
            )
        for name, refs in expected.items():
            got = outputs.get(name)
            if not isinstance(got, list) or len(got) != len(refs):
                count = len(got) if isinstance(got, list) else type(got).__name__
                raise failure(
                    ex,
                    f"outputs[{name!r}] holds {count} entries after one forward pass, "
                    f"expected {len(refs)} ({name} is called {len(refs)}× per pass)",
                    "append the hook's output to a list on every call; do not overwrite it.",
                )
            for k, (out, ref) in enumerate(zip(got, refs, strict=True)):
                if not isinstance(out, torch.Tensor) or out.shape != ref.shape:
                    raise failure(
                        ex,
                        f"outputs[{name!r}][{k}] is not a tensor of shape {tuple(ref.shape)}",
                        "store the hook's third argument, `output`.",
                    )
                if out.requires_grad:
                    raise failure(
                        ex, f"outputs[{name!r}][{k}] still requires grad", "store output.detach()."
                    )
                if not torch.allclose(out, ref, atol=1e-5):
                    raise failure(
                        ex,
                        f"outputs[{name!r}][{k}] differs from the layer's output",
                        "store the hook's output (third argument), not its input.",
                    )
        # Two passes inside one block record twice; a fresh recorder starts empty.
        with recorder_cls(model, ["conv1"]) as again, torch.no_grad():
            model(x)
            model(x)
        n_again = len(again.outputs.get("conv1", []))
        if n_again != 2:
            raise failure(
                ex,
                f"a fresh recorder over two forward passes holds {n_again} conv1 outputs, "
                "expected 2",
                "create the outputs dict in __init__ or __enter__ (self.outputs = {...}), not "
                "as a class attribute shared by every recorder.",
            )
        # An in-place layer after the recorded one must not change what was recorded.
        net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True))
        with torch.no_grad():
            raw = net[0](x)
        with recorder_cls(net, ["0"]) as inplace, torch.no_grad():
            net(x)
        kept = inplace.outputs["0"][0]
        if not torch.equal(kept, raw):
            raise failure(
                ex,
                "the recorded conv output lost its negative values to the in-place ReLU after it",
                "store output.detach().clone(): without the clone you keep a reference that "
                "the next in-place layer overwrites.",
            )
        # An error inside the block: hooks removed, the error not swallowed.
        propagated = False
        try:
            with recorder_cls(model, names):
                model(torch.zeros(1, 1, 20, 20))  # FashionCNN refuses 20×20 inputs
        except ValueError:
            propagated = True
        left = _forward_hooks(model)
        if left:
            raise failure(
                ex,
                f"{left} hook(s) left after a `with` block that raised",
                "__exit__ runs also when the block raises: remove the handles there.",
            )
        if not propagated:
            raise failure(
                ex,
                "the error raised inside the `with` block was swallowed",
                "__exit__ must return None/False, so that the exception carries on.",
            )
    passed(
        ex,
        "conv1 and pool (twice per pass) recorded exactly, detached clones, fresh per "
        "recorder; zero hooks left, also after an error",
    )


def _name(obj: object) -> str:
    return getattr(obj, "__name__", type(obj).__name__)
