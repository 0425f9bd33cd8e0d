"""Dead units, as chapter 3 counts them by hand: the package version for tables and tests.

Activations are recorded with :func:`course_utils.hooks.capture_activations`, whose hooks are
removed when its ``with`` block ends, even if the forward pass raises.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
import torch
from torch import nn

from .hooks import capture_activations
from .models import ACTIVATIONS
from .train import eval_mode

__all__ = ["activation_modules", "dead_units", "silent_units"]


def activation_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The model's activation layers (the types in :data:`~course_utils.models.ACTIVATIONS`),
    by qualified name, in registration order."""
    kinds = tuple(ACTIVATIONS.values())
    return {name: m for name, m in model.named_modules() if isinstance(m, kinds)}


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
    names: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Per activation layer: how many units never had a positive pre-activation on ``batches``.

    The model runs in eval mode under ``torch.no_grad()``; its mode is restored and every hook is
    removed afterwards, also when the forward pass fails.

    ``batches`` is one input tensor, or an iterable of ``(x, y)`` batches (all are combined: a
    unit is counted as silent only if it is silent on every batch); ``names`` are the activation
    layers to inspect (default: :func:`activation_modules`). Returns one row per layer:
    ``units``, ``silent`` (count) and ``fraction``.
    """
    names = list(names) if names is not None else list(activation_modules(model))
    if not names:
        raise ValueError("no activation layers to inspect: pass their names")
    if isinstance(batches, torch.Tensor):
        batches = [(batches, None)]
    device = next(model.parameters()).device
    largest: dict[str, torch.Tensor] = {}
    with eval_mode(model), capture_activations(model, names, inputs=True) as pre, torch.no_grad():
        for x, _ in batches:
            model(x.to(device))
            for name in names:
                m = _unit_max(pre[name].pop())
                largest[name] = m if name not in largest else torch.maximum(largest[name], m)
    if not largest:
        raise ValueError("no batches were given")
    rows = [
        (name, len(m), int((m <= 0).sum()), float((m <= 0).float().mean()))
        for name, m in largest.items()
    ]
    return pd.DataFrame(rows, columns=["layer", "units", "silent", "fraction"]).set_index("layer")
