"""Checks of the chapter 5 exercises: filter display, capturing activations with a hook."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ._common import (
    failure,
    passed,
    small_model,
)

__all__ = [
    "check_filter_display",
    "check_hook_capture",
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
        try:
            out = fn(w)
        except NotImplementedError:
            raise
        except Exception as err:
            raise failure(
                ex, f"raised {type(err).__name__} on the {case}: {err}", "work on a detached copy."
            ) from err
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
        try:
            out = fn(model, name, x)
        except NotImplementedError:
            raise
        except Exception as err:
            raise failure(
                ex, f"raised {type(err).__name__} for {name!r}: {err}", "use getattr/named_modules."
            ) from err
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
