"""Looking inside a trained network: recording activations with hooks, counting dead units.

Hooks are owned by a context manager (:class:`ActivationRecorder`), so they are removed when the
``with`` block ends, even if the forward pass raises. A hook left behind keeps recording on every
later forward pass, holds on to tensors and slows training down.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import TracebackType

import pandas as pd
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .models import ACTIVATIONS

__all__ = ["ActivationRecorder", "activation_modules", "dead_units", "silent_units"]


def activation_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The model's activation layers (the types in :data:`~course_utils.models.ACTIVATIONS`),
    by qualified name, in registration order."""
    kinds = tuple(ACTIVATIONS.values())
    return {name: m for name, m in model.named_modules() if isinstance(m, kinds)}


class ActivationRecorder:
    """Record the input (the pre-activation) and output of chosen modules during forward passes.

    Use as a context manager; the hooks exist only inside the ``with`` block::

        with ActivationRecorder(model, activation_modules(model)) as rec:
            model(x)
        rec.inputs["act1"]  # [N, C, H, W], detached

    Each forward pass *replaces* what was recorded (the last call wins).

    Args:
        model: the network (used only to check that the modules belong to it).
        modules: the modules to watch, by name.
    """

    def __init__(self, model: nn.Module, modules: Mapping[str, nn.Module]) -> None:
        if not modules:
            raise ValueError("no modules to record: pass at least one {name: module}")
        own = {id(m) for m in model.modules()}
        foreign = [name for name, m in modules.items() if id(m) not in own]
        if foreign:
            raise ValueError(f"modules {foreign} are not part of the model")
        self.modules = dict(modules)
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list[RemovableHandle] = []

    def _hook(self, name: str):  # noqa: ANN202 - a forward-hook closure
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            self.inputs[name] = args[0].detach()
            self.outputs[name] = output.detach()

        return hook

    def __enter__(self) -> ActivationRecorder:
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.modules.items()]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _unit_max(t: torch.Tensor) -> torch.Tensor:
    """The largest value each unit took: per channel for ``[N, C, H, W]``, per feature for
    ``[N, F]`` (reduced over every other dimension)."""
    if t.dim() < 2:
        raise ValueError(
            f"expected a batch of activations [N, units, ...], got shape {tuple(t.shape)}"
        )
    return t.transpose(0, 1).reshape(t.shape[1], -1).amax(dim=1)


def silent_units(pre_activation: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the units whose pre-activation is ``<= 0`` for every input and position.

    After a ReLU such a unit outputs 0 everywhere and receives no gradient: it is *dead* on these
    inputs. After LeakyReLU or ELU it is merely in the negative regime (it still passes a small
    signal and a gradient).
    """
    return _unit_max(pre_activation.float()) <= 0


def dead_units(
    model: nn.Module,
    batches: torch.Tensor | Iterable[tuple[torch.Tensor, torch.Tensor]],
    modules: Mapping[str, nn.Module] | None = None,
) -> pd.DataFrame:
    """Per activation layer: how many units never had a positive pre-activation on ``batches``.

    The model runs in eval mode under ``torch.no_grad()``; its mode is restored and every hook is
    removed afterwards, also when the forward pass fails.

    Args:
        model: the network.
        batches: one input tensor, or an iterable of ``(x, y)`` batches (all are combined: a unit
            is counted as silent only if it is silent on every batch).
        modules: the activation layers to inspect (default: :func:`activation_modules`).

    Returns:
        One row per layer: ``units``, ``silent`` (count) and ``fraction``.
    """
    modules = dict(modules) if modules is not None else activation_modules(model)
    if isinstance(batches, torch.Tensor):
        batches = [(batches, None)]
    device = next(model.parameters()).device
    largest: dict[str, torch.Tensor] = {}
    was_training = model.training
    model.eval()
    try:
        with ActivationRecorder(model, modules) as rec, torch.no_grad():
            for x, _ in batches:
                model(x.to(device))
                for name, pre in rec.inputs.items():
                    m = _unit_max(pre.float())
                    largest[name] = m if name not in largest else torch.maximum(largest[name], m)
    finally:
        model.train(was_training)
    if not largest:
        raise ValueError("no batches were given")
    rows = [
        {
            "layer": name,
            "units": len(m),
            "silent": int((m <= 0).sum()),
            "fraction": float((m <= 0).float().mean()),
        }
        for name, m in largest.items()
    ]
    return pd.DataFrame(rows).set_index("layer")
