"""Unit tests for ``course_utils.models``: shapes, options, construction side effects, counting."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from course_utils.models import ACTIVATIONS, FashionCNN, count_parameters


def batch(*size: int, n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, *size, generator=torch.Generator().manual_seed(seed))


def modules_of(model: nn.Module, kind: type[nn.Module]) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kind)]


@pytest.mark.parametrize(
    "input_size", [28, 32, 64, (40, 29), [40, 29]], ids=["28", "32", "64", "40x29", "list"]
)
def test_output_shape_for_each_input_size(input_size: int | tuple[int, int]) -> None:
    """Breaks if the flatten size is hard-coded or non-square inputs are mishandled."""
    model = FashionCNN(input_size=input_size)
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    assert model(batch(h, w, n=3)).shape == (3, 10)
    # The flatten size follows the input: two 2×2 poolings of 2·width channels.
    assert model.fc1.in_features == 64 * (h // 4) * (w // 4)


def test_output_shape_follows_num_classes_and_channels() -> None:
    """Breaks if ``num_classes`` or ``in_channels`` are ignored."""
    model = FashionCNN(num_classes=3, in_channels=3, input_size=32)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize("input_size", [27, (28, 20), 8])
def test_input_size_below_28_is_refused(input_size: int | tuple[int, int]) -> None:
    """Breaks if a too-small input is accepted (the pools would leave too little to classify)."""
    with pytest.raises(ValueError, match="at least 28"):
        FashionCNN(input_size=input_size)


def test_wrong_input_size_at_forward_says_how_to_fix_it() -> None:
    """Breaks if a mismatched input fails with torch's opaque matmul error instead of ours."""
    model = FashionCNN()  # built for 28×28
    with pytest.raises(ValueError) as info:
        model(batch(32, 32))
    message = str(info.value)
    assert "28×28" in message
    assert "(4, 1, 32, 32)" in message
    assert "input_size=(32, 32)" in message


def test_norm_batch_adds_batchnorm_and_drops_redundant_biases() -> None:
    """Breaks if ``norm="batch"`` does not add BatchNorm (or ``"none"`` adds some)."""
    plain, normed = FashionCNN(norm="none"), FashionCNN(norm="batch")
    assert modules_of(plain, nn.modules.batchnorm._BatchNorm) == []
    assert len(modules_of(normed, nn.BatchNorm2d)) == 2
    assert len(modules_of(normed, nn.BatchNorm1d)) == 1
    assert plain.conv1.bias is not None and normed.conv1.bias is None
    assert normed.fc1.bias is None
    # The layers are used: in train mode each output is normalised over the batch.
    normed.train()
    out = normed.bn1(normed.conv1(batch(28, 28, n=8)))
    torch.testing.assert_close(out.mean((0, 2, 3)), torch.zeros(32), atol=1e-5, rtol=0)
    assert normed(batch(28, 28)).shape == (4, 10)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_activation_is_swapped_everywhere(activation: str) -> None:
    """Breaks if the ``activation`` option is ignored in any of the three places."""
    model = FashionCNN(activation=activation)
    kind = ACTIVATIONS[activation]
    assert [type(m) for m in (model.act1, model.act2, model.act3)] == [kind] * 3
    others = [k for k in set(ACTIVATIONS.values()) if k is not kind]
    assert not any(modules_of(model, k) for k in others)


def test_activation_changes_the_function_computed() -> None:
    """Breaks if the activation modules are built but forward still uses ReLU."""
    outputs = {}
    for activation in ("relu", "gelu", "elu"):
        torch.manual_seed(0)  # identical weights: activations have no parameters
        model = FashionCNN(activation=activation).eval()
        outputs[activation] = model(batch(28, 28))
    assert not torch.allclose(outputs["relu"], outputs["gelu"])
    assert not torch.allclose(outputs["relu"], outputs["elu"])


@pytest.mark.parametrize(
    ("dropout", "conv_dropout"), [(0.5, 0.0), (0.0, 0.3), (0.5, 0.3)], ids=["fc", "conv", "both"]
)
def test_dropout_is_active_in_train_mode_only(dropout: float, conv_dropout: float) -> None:
    """Breaks if dropout is missing, ignores its probability, or stays on in eval mode."""
    torch.manual_seed(0)
    model = FashionCNN(dropout=dropout, conv_dropout=conv_dropout)
    if dropout:
        assert isinstance(model.dropout, nn.Dropout) and model.dropout.p == dropout
    if conv_dropout:
        assert isinstance(model.conv_dropout, nn.Dropout2d) and model.conv_dropout.p == conv_dropout
    x = batch(28, 28)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_no_dropout_means_deterministic_training_forward() -> None:
    """Breaks if dropout layers are present when both probabilities are 0 (the default)."""
    model = FashionCNN()
    assert modules_of(model, nn.Dropout) == [] and modules_of(model, nn.Dropout2d) == []
    model.train()
    x = batch(28, 28)
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize(("option", "value"), [("norm", "layer"), ("activation", "tanh")])
def test_unknown_option_is_refused(option: str, value: str) -> None:
    """Breaks if a typo in ``norm`` or ``activation`` silently gives the default network."""
    with pytest.raises(ValueError, match=repr(value)):
        FashionCNN(**{option: value})


def test_construction_leaves_batchnorm_untouched_and_model_in_train_mode() -> None:
    """Breaks if the dummy pass that sizes fc1 updates BatchNorm's running statistics."""
    model = FashionCNN(norm="batch", input_size=(40, 29))
    norms = modules_of(model, nn.modules.batchnorm._BatchNorm)
    assert len(norms) == 3
    for bn in norms:
        assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
        assert bn.num_batches_tracked.item() == 0
    assert all(m.training for m in model.modules())


def test_count_parameters_total_and_trainable() -> None:
    """Breaks if frozen parameters are counted as trainable, or the total miscounts."""
    model = FashionCNN()
    conv1 = 1 * 32 * 3 * 3 + 32
    conv2 = 32 * 64 * 3 * 3 + 64
    fc1 = 64 * 7 * 7 * 128 + 128
    fc2 = 128 * 10 + 10
    total = conv1 + conv2 + fc1 + fc2
    assert count_parameters(model) == total == 421_642
    assert count_parameters(model, trainable_only=True) == total
    model.conv1.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == total - conv1
    assert count_parameters(model) == total


def test_config_rebuilds_the_same_architecture() -> None:
    """Breaks if ``config`` forgets an argument (checkpoints rebuild models from it)."""
    model = FashionCNN(
        num_classes=5, width=16, hidden=64, norm="batch", activation="gelu", dropout=0.2,
        conv_dropout=0.1, input_size=(40, 29),
    )  # fmt: skip
    rebuilt = FashionCNN(**model.config)
    assert rebuilt.config == model.config
    assert str(rebuilt) == str(model)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
