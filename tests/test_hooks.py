"""``course_utils.hooks``: the recorder records outputs or inputs and always removes its hooks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from course_utils.hooks import capture_activations, hook_count
from course_utils.models import FashionCNN


def test_capture_records_outputs_and_removes_hooks(model: FashionCNN) -> None:
    x = torch.randn(2, 1, 28, 28)
    with capture_activations(model, ["conv1", "pool"]) as acts:
        assert hook_count(model) == 2
        model(x)
    assert hook_count(model) == 0
    torch.testing.assert_close(acts["conv1"][0], model.conv1(x).detach())
    assert [tuple(a.shape) for a in acts["pool"]] == [(2, 32, 14, 14), (2, 64, 7, 7)]
    assert not acts["conv1"][0].requires_grad


def test_capture_removes_hooks_when_the_block_raises(model: FashionCNN) -> None:
    with pytest.raises(ValueError, match="28×28"), capture_activations(model, ["conv1"]):
        model(torch.zeros(1, 1, 20, 20))
    assert hook_count(model) == 0


def test_capture_unknown_name_is_a_clear_error(model: FashionCNN) -> None:
    with pytest.raises(KeyError, match="conv3"), capture_activations(model, ["conv3"]):
        pass
    assert hook_count(model) == 0


def test_capture_inputs_records_the_pre_activation() -> None:
    relu = nn.ReLU()
    model = nn.Sequential(nn.Identity(), relu)
    x = torch.tensor([[1.0, -1.0, 2.0, -0.5]])
    with (
        capture_activations(model, ["1"], inputs=True) as pre,
        capture_activations(model, ["1"]) as post,
    ):
        model(x)
    assert pre["1"][0].tolist() == [[1.0, -1.0, 2.0, -0.5]]
    assert post["1"][0].tolist() == [[1.0, 0.0, 2.0, 0.0]]
    assert hook_count(model) == 0


def test_hook_count_sees_every_kind_of_hook(model: FashionCNN) -> None:
    handles = [
        model.conv1.register_forward_hook(lambda *a: None),
        model.conv1.register_forward_pre_hook(lambda *a: None),
        model.fc1.register_full_backward_hook(lambda *a: None),
    ]
    assert hook_count(model) == 3
    for h in handles:
        h.remove()
    assert hook_count(model) == 0
