"""Freezing (requires_grad, optimiser, BatchNorm statistics), digits data and label budgets."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from course_utils.data import TensorLoader, label_budget
from course_utils.hooks import hook_count
from course_utils.models import FashionCNN
from course_utils.train import fit
from course_utils.transfer import (
    changed_parameters,
    freeze,
    load_digits_tensors,
    parameter_counts,
    snapshot,
    trainable_parameters,
    unfreeze,
)


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, n: int = 2) -> None:
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(n):
        x, y = torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def test_freeze_conv1_keeps_it_bit_identical() -> None:
    torch.manual_seed(0)
    model = FashionCNN()
    frozen = freeze(model, ["conv1"])
    assert frozen == ["conv1.weight", "conv1.bias"]
    before = snapshot(model)
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-2, weight_decay=0.1)
    _step(model, optimizer)
    changed = changed_parameters(model, before)
    assert "conv1.weight" not in changed and "conv1.bias" not in changed
    assert set(changed) == set(before) - {"conv1.weight", "conv1.bias"}


def test_weight_decay_moves_frozen_params_given_to_the_optimiser() -> None:
    """Why the optimiser must get only trainable parameters: AdamW decays what it holds."""
    torch.manual_seed(0)
    model = FashionCNN()
    freeze(model, ["conv1"])
    before = snapshot(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    # A parameter without .grad is skipped by AdamW, so give conv1 a zero grad (as happens when
    # it was trainable in an earlier phase and zero_grad(set_to_none=False) was used).
    model.conv1.weight.grad = torch.zeros_like(model.conv1.weight)
    optimizer.step()
    assert "conv1.weight" in changed_parameters(model, before)


def test_parameter_counts() -> None:
    model = FashionCNN()
    total = sum(p.numel() for p in model.parameters())
    assert parameter_counts(model) == {"trainable": total, "frozen": 0, "total": total}
    freeze(model, ["conv1", "conv2"])
    conv = 32 * 9 + 32 + 64 * 32 * 9 + 64
    assert parameter_counts(model) == {"trainable": total - conv, "frozen": conv, "total": total}


def test_freeze_unknown_name() -> None:
    with pytest.raises(KeyError, match="conv9"):
        freeze(FashionCNN(), ["conv9"])


def test_freeze_refuses_the_whole_model_and_takes_any_iterable() -> None:
    """``""`` names the model itself, which is not a layer to freeze; a generator of names
    works like a list (the name check must not use it up)."""
    model = FashionCNN()
    with pytest.raises(KeyError, match=r"\[''\]"):
        freeze(model, [""])
    assert all(p.requires_grad for p in model.parameters())
    freeze(model, (name for name in ["conv1"]))
    assert not model.conv1.weight.requires_grad and model.conv2.weight.requires_grad


def test_frozen_batchnorm_statistics_survive_train_mode() -> None:
    torch.manual_seed(0)
    model = FashionCNN(norm="batch")
    freeze(model, ["conv1", "bn1"])
    before = snapshot(model)
    model.train()
    _step(model, torch.optim.SGD(trainable_parameters(model), lr=0.1))
    changed = changed_parameters(model, before)
    assert not [k for k in changed if k.startswith(("conv1.", "bn1."))]
    assert "bn2.running_mean" in changed  # the trainable block's BN still adapts
    assert model.bn2.training


def test_freeze_swaps_in_frozen_batchnorm_without_hooks() -> None:
    torch.manual_seed(0)
    model = FashionCNN(norm="batch").eval()
    with torch.no_grad():
        model.bn1.running_mean.normal_()
        model.bn1.running_var.uniform_(0.5, 2.0)
    x = torch.randn(4, 1, 28, 28)
    expected = model(x)
    frozen = freeze(model, ["conv1", "bn1"])
    assert frozen == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert isinstance(model.bn1, FrozenBatchNorm2d) and hook_count(model) == 0
    # FrozenBatchNorm2d has running statistics (buffers); it just never updates them.
    assert {"bn1.running_mean", "bn1.running_var", "bn1.weight"} <= set(model.state_dict())
    torch.testing.assert_close(model(x), expected)  # same function as the eval-mode BN


def test_unfreeze_restores_batchnorm_training() -> None:
    """Frozen: bn1's statistics survive model.train() and steps. Unfrozen: they and conv1 train
    again, once the returned parameters are added to the optimiser."""
    torch.manual_seed(0)
    model = FashionCNN(norm="batch")
    freeze(model, ["conv1", "bn1"])
    optimizer = torch.optim.SGD(trainable_parameters(model), lr=0.1)
    before = snapshot(model)
    _step(model, optimizer)
    assert not [k for k in changed_parameters(model, before) if k.startswith(("conv1", "bn1"))]
    newly = unfreeze(model, ["conv1", "bn1"])
    assert type(model.bn1) is nn.BatchNorm2d and model.bn1.training
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in newly) == ["bn1.bias", "bn1.weight", "conv1.weight"]
    assert all(p.requires_grad for p in model.parameters())
    assert torch.equal(model.bn1.running_mean, before["bn1.running_mean"])
    optimizer.add_param_group({"params": newly, "lr": 0.01})
    before = snapshot(model)
    _step(model, optimizer)
    changed = changed_parameters(model, before)
    for key in ("conv1.weight", "bn1.weight", "bn1.running_mean", "bn1.running_var"):
        assert key in changed, key


def test_unfreeze_of_a_trainable_module_returns_nothing() -> None:
    model = FashionCNN()
    freeze(model, ["conv1"])
    assert unfreeze(model, ["conv2"]) == []
    assert len(unfreeze(model, ["conv1"])) == 2 and unfreeze(model, ["conv1"]) == []


def test_freeze_refuses_batchnorm1d_before_changing_anything() -> None:
    model = FashionCNN(norm="batch")
    with pytest.raises(TypeError, match="BatchNorm1d"):
        freeze(model, ["conv1", "bn_fc"])
    assert all(p.requires_grad for p in model.parameters())


def test_unfrozen_batchnorm_statistics_do_change() -> None:
    """The control for the test above: requires_grad_(False) alone does not protect BN stats."""
    torch.manual_seed(0)
    model = FashionCNN(norm="batch")
    model.bn1.requires_grad_(False)
    before = snapshot(model)
    _step(model, torch.optim.SGD(trainable_parameters(model), lr=0.1))
    assert "bn1.running_mean" in changed_parameters(model, before)


def test_load_digits_tensors() -> None:
    d = load_digits_tensors()
    assert len(d["train"]) + len(d["test"]) == 1797
    assert len(d["test"]) == 540
    for split in d.values():
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (28, 28)
    assert int(d["train"].images.max()) == 255 and int(d["train"].images.min()) == 0
    # stratified: every class is in both splits in about the same proportion
    train_counts = torch.bincount(d["train"].labels, minlength=10)
    test_counts = torch.bincount(d["test"].labels, minlength=10)
    assert train_counts.min() >= 120 and test_counts.min() >= 50
    # no image is in both splits (same seed → same split; different seed → different split)
    again = load_digits_tensors()
    assert torch.equal(again["test"].labels, d["test"].labels)
    other = load_digits_tensors(seed=1)
    assert not torch.equal(other["test"].images, d["test"].images)


def test_load_digits_tensors_validation_split() -> None:
    """The validation split comes out of the training part: the test set is the one without a
    validation split, the three splits are disjoint and cover the data, and each is stratified
    and seeded."""
    plain = load_digits_tensors()
    d = load_digits_tensors(val_fraction=0.2)
    assert list(d) == ["train", "val", "test"]
    assert torch.equal(d["test"].images, plain["test"].images)
    assert torch.equal(d["test"].labels, plain["test"].labels)
    assert len(d["val"]) == round(0.2 * 1797)
    assert sum(len(split) for split in d.values()) == 1797
    # load_digits has no duplicate (image, label), so a shared one means a shared example
    rows = {
        name: {
            bytes(img.numpy()) + bytes([int(lab)])
            for img, lab in zip(split.images, split.labels, strict=True)
        }
        for name, split in d.items()
    }
    assert not rows["train"] & rows["val"] and not rows["val"] & rows["test"]
    counts = torch.bincount(d["val"].labels, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38  # stratified: about 36 of each digit
    again = load_digits_tensors(val_fraction=0.2)
    assert torch.equal(again["val"].labels, d["val"].labels)
    other = load_digits_tensors(val_fraction=0.2, seed=1)
    assert not torch.equal(other["val"].images, d["val"].images)


@pytest.mark.parametrize(
    ("test_fraction", "val_fraction"), [(0.0, 0.2), (0.3, -0.1), (0.6, 0.4), (1.0, 0.0)]
)
def test_load_digits_tensors_refuses_bad_fractions(test_fraction, val_fraction) -> None:
    with pytest.raises(ValueError, match="fraction"):
        load_digits_tensors(test_fraction=test_fraction, val_fraction=val_fraction)


def test_digits_batches_are_normalised_like_the_source() -> None:
    d = load_digits_tensors()
    x, _ = next(iter(TensorLoader(d["train"], 2000)))
    assert abs(float(x.mean())) < 0.2 and 0.8 < float(x.std()) < 1.2


def test_a_pretrained_model_trains_on_digits() -> None:
    torch.manual_seed(0)
    d = load_digits_tensors()
    model = FashionCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    hist = fit(
        model,
        TensorLoader(d["train"], 64, shuffle=True),
        TensorLoader(d["test"], 540),
        2,
        opt,
        progress=False,
    )
    assert hist.val_acc[-1] > 0.5


def test_label_budget() -> None:
    labels = torch.tensor([0, 1, 2] * 20)
    idx = label_budget(labels, 5, seed=0)
    assert torch.bincount(labels[idx]).tolist() == [5, 5, 5]
    assert torch.equal(idx, idx.sort().values) and len(idx.unique()) == 15
    assert torch.equal(idx, label_budget(labels, 5, seed=0))
    assert not torch.equal(idx, label_budget(labels, 5, seed=1))
    # a smaller budget with the same seed is not required to be a subset, but all is everything
    assert torch.equal(label_budget(labels, None), torch.arange(60))
    with pytest.raises(ValueError, match="fewer than"):
        label_budget(labels, 21)
    with pytest.raises(ValueError, match="at least 1"):
        label_budget(labels, 0)
