"""``course_utils.diagnostics``: silent/dead units on hand-built cases; hooks always removed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from course_utils.diagnostics import (
    activation_modules,
    dead_units,
    silent_units,
)
from course_utils.models import FashionCNN


def hand_built() -> nn.Sequential:
    """Linear(2→4) → ReLU; unit 3 has a negative bias and zero weights: always dead.

    One dead unit of four (not two), so that counting the *alive* units instead of the dead
    ones gives a different answer (3 and 0.75, not 1 and 0.25).
    """
    lin = nn.Linear(2, 4)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0], [1.0, 1.0], [0, 1.0], [0, 0]]))
        lin.bias.copy_(torch.tensor([0.0, 0.0, 0.0, -0.5]))
    return nn.Sequential(lin, nn.ReLU(), nn.Linear(4, 3))


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_silent_units_per_channel_and_per_feature() -> None:
    x = -torch.ones(5, 3, 4, 4)
    x[2, 0, 1, 1] = 0.1  # channel 0 fires once: not silent
    assert silent_units(x).tolist() == [False, True, True]
    assert silent_units(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])).tolist() == [False, True]
    with pytest.raises(ValueError, match="batch of activations"):
        silent_units(torch.ones(3))


def test_dead_units_on_hand_built_model() -> None:
    model = hand_built()
    x = torch.tensor([[1.0, 1.0], [2.0, -1.0], [-1.0, 3.0]])
    table = dead_units(model, x)
    assert table.loc["1", "units"] == 4 and table.loc["1", "silent"] == 1
    assert table.loc["1", "fraction"] == 0.25
    # Several batches combine: a unit silent in one batch but active in another is not dead.
    x_neg = -torch.ones(2, 2)
    all_dead = dead_units(model, [(x_neg, None)]).loc["1"]
    assert all_dead["silent"] == 4 and all_dead["fraction"] == 1.0
    assert dead_units(model, [(x_neg, None), (x, None)]).loc["1", "silent"] == 1
    assert no_hooks(model)


def test_dead_units_restores_mode_and_removes_hooks_on_error() -> None:
    model = FashionCNN(width=4, hidden=8).train()
    table = dead_units(model, torch.randn(4, 1, 28, 28))
    assert list(table.index) == ["act1", "act2", "act3"]
    assert list(table["units"]) == [4, 8, 8]
    assert model.training and no_hooks(model)
    with pytest.raises(ValueError, match="built for 28×28"):
        dead_units(model, torch.randn(2, 1, 30, 30))
    assert model.training and no_hooks(model)


def test_activation_modules_finds_every_kind() -> None:
    for act in ("relu", "leaky_relu", "elu", "gelu", "silu"):
        assert list(activation_modules(FashionCNN(activation=act))) == ["act1", "act2", "act3"]
