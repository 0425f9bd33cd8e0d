"""Forward hooks as plumbing: one recorder for later chapters, and a hook counter for tests.

Chapter 5 writes forward hooks by hand; chapters 3 and 5 then use :func:`capture_activations`
for their tables and widgets. Hooks are owned by a context manager, so they are removed when the
``with`` block ends, even if the forward pass raises: a hook left behind keeps firing (and keeps
tensors alive) on every later forward pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["capture_activations", "hook_count", "submodules"]


def submodules(
    model: nn.Module, names: Iterable[str], *, root: bool = True
) -> dict[str, nn.Module]:
    """``{name: module}`` for ``names``; a ``KeyError`` for a name that is not a submodule (or,
    with ``root=False``, is ``""``, the model itself) lists the ones ``model`` has."""
    modules = dict(model.named_modules())
    names = list(dict.fromkeys(names))
    if unknown := [n for n in names if n not in modules or not (n or root)]:
        known = [n for n in modules if n]
        raise KeyError(f"no submodule named {unknown}; the model has {known}")
    return {n: modules[n] for n in names}


@contextmanager
def capture_activations(
    model: nn.Module, names: Iterable[str], *, inputs: bool = False
) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record the outputs (or, with ``inputs=True``, the first inputs) of the named submodules
    during the forward passes inside the block.

    Yields ``{name: [tensor of 1st call, tensor of 2nd call, ...]}`` (detached, float32, on the
    CPU). A module called twice per forward pass (a shared pooling layer) appends twice. The hooks
    are removed on exit, also when the block raises.

    Example::

        with capture_activations(model, ["conv1"]) as acts:
            model(x)
        conv1_out = acts["conv1"][0]

    Raises:
        KeyError: a name is not a submodule of ``model`` (the message lists the ones it has).
    """
    modules = submodules(model, names)
    captured: dict[str, list[torch.Tensor]] = {n: [] for n in modules}
    handles = []
    try:
        for name, module in modules.items():

            def hook(_module: nn.Module, args: tuple, output: torch.Tensor, name=name) -> None:
                seen = args[0] if inputs else output
                captured[name].append(seen.detach().float().cpu().clone())

            handles.append(module.register_forward_hook(hook))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def hook_count(model: nn.Module) -> int:
    """Forward, forward-pre and backward hooks registered on ``model`` and all its submodules."""
    return sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(getattr(m, "_backward_pre_hooks", {}))
        for m in model.modules()
    )
