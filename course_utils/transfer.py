"""Transfer learning: freezing and unfreezing layers (and proving it), and the digits data.

The target is scikit-learn's ``load_digits``: 1,797 real 8×8 scans of handwritten digits (pixel
values 0–16), resized to 28×28 and stored as uint8 like Fashion-MNIST, so the course's
``TensorLoader`` normalises them with the source's mean and std, exactly as the pretrained
network expects its inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.ops import FrozenBatchNorm2d

from .data import FashionMNISTTensors
from .hooks import submodules

__all__ = [
    "DIGIT_CLASSES",
    "changed_parameters",
    "freeze",
    "load_digits_tensors",
    "parameter_counts",
    "snapshot",
    "trainable_parameters",
    "unfreeze",
]

DIGIT_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))


def freeze(model: nn.Module, names: Iterable[str]) -> list[str]:
    """Freeze the named submodules: ``requires_grad_(False)`` on their parameters, and each
    ``BatchNorm2d`` inside them swapped for torchvision's ``FrozenBatchNorm2d``.

    ``requires_grad_(False)`` does not freeze a BatchNorm's running mean and variance: in train
    mode every forward pass updates them. ``FrozenBatchNorm2d`` holds the same statistics and
    affine values as buffers and always normalises with them, whatever ``model.train()`` says.
    Freeze before building the optimiser; :func:`unfreeze` undoes all of it.

    Returns:
        The names of the parameters that were frozen.

    Raises:
        KeyError: a name is not a submodule of ``model``.
        TypeError: a BatchNorm inside a frozen module is not ``BatchNorm2d`` (or does not track
            running statistics), so ``FrozenBatchNorm2d`` cannot stand in for it.
    """
    modules = submodules(model, names, root=False)
    for module in modules.values():  # refuse before changing anything
        for sub in module.modules():
            if isinstance(sub, _BatchNorm):
                _check_freezable(sub)
    frozen = []
    for name, module in modules.items():
        for pname, p in module.named_parameters():
            p.requires_grad_(False)
            frozen.append(f"{name}.{pname}")
        _swap(model, name, _BatchNorm, _to_frozen)
    return frozen


def unfreeze(model: nn.Module, names: Iterable[str]) -> list[nn.Parameter]:
    """Undo :func:`freeze` for the named submodules: ``FrozenBatchNorm2d`` back to a training
    ``BatchNorm2d`` (same statistics, in the model's current mode), and ``requires_grad`` on.

    Returns:
        The parameters that became trainable: give them to the optimiser, e.g.
        ``optimizer.add_param_group({"params": unfreeze(model, ["conv1"]), "lr": ...})``.
    """
    modules = submodules(model, names, root=False)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    for name in modules:
        _swap(model, name, FrozenBatchNorm2d, _to_batchnorm)
    newly = []
    for name in modules:
        for p in model.get_submodule(name).parameters():
            if id(p) not in trainable:
                p.requires_grad_(True)
                trainable.add(id(p))
                newly.append(p)
    return newly


def _swap(
    model: nn.Module, name: str, kind: type, convert: Callable[[nn.Module], nn.Module]
) -> None:
    """Replace every ``kind`` module in ``model.<name>`` (or ``model.<name>`` itself)."""
    for sub_name, sub in list(model.get_submodule(name).named_modules()):
        if isinstance(sub, kind):
            full = f"{name}.{sub_name}" if sub_name else name
            parent_name, _, attr = full.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, convert(sub))


def _check_freezable(bn: nn.Module) -> None:
    if type(bn) is not nn.BatchNorm2d or bn.running_mean is None:
        raise TypeError(
            f"cannot freeze {bn}: only a BatchNorm2d with running statistics has a "
            "FrozenBatchNorm2d counterpart; keep it in eval mode yourself"
        )


def _to_frozen(bn: nn.Module) -> FrozenBatchNorm2d:
    _check_freezable(bn)
    frozen = FrozenBatchNorm2d(bn.num_features, eps=bn.eps).to(bn.running_mean.device)
    with torch.no_grad():
        frozen.running_mean.copy_(bn.running_mean)
        frozen.running_var.copy_(bn.running_var)
        if bn.affine:
            frozen.weight.copy_(bn.weight)
            frozen.bias.copy_(bn.bias)
    # What FrozenBatchNorm2d does not keep, for unfreeze (plain attributes, not state).
    frozen.restore = {
        "momentum": bn.momentum,
        "affine": bn.affine,
        "num_batches_tracked": int(bn.num_batches_tracked),
    }
    return frozen


def _to_batchnorm(frozen: nn.Module) -> nn.BatchNorm2d:
    restore = getattr(frozen, "restore", {"momentum": 0.1, "affine": True})
    momentum, affine = restore["momentum"], restore["affine"]
    bn = nn.BatchNorm2d(frozen.weight.numel(), eps=frozen.eps, momentum=momentum, affine=affine)
    bn = bn.to(frozen.running_mean.device)
    with torch.no_grad():
        bn.running_mean.copy_(frozen.running_mean)
        bn.running_var.copy_(frozen.running_var)
        bn.num_batches_tracked.fill_(restore.get("num_batches_tracked", 0))
        if bn.affine:
            bn.weight.copy_(frozen.weight)
            bn.bias.copy_(frozen.bias)
    return bn


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters with ``requires_grad``: what the optimiser should be given."""
    return [p for p in model.parameters() if p.requires_grad]


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """``{"trainable": …, "frozen": …, "total": …}`` parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in trainable_parameters(model))
    return {"trainable": trainable, "frozen": total - trainable, "total": total}


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of every parameter and buffer (``state_dict``), to compare later."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def changed_parameters(model: nn.Module, before: dict[str, torch.Tensor]) -> list[str]:
    """Names of the ``state_dict`` entries of ``before`` that are gone or not bit-identical now."""
    now = model.state_dict()
    return [
        k for k, v in before.items() if k not in now or not torch.equal(now[k].detach().cpu(), v)
    ]


def load_digits_tensors(
    size: int = 28, test_fraction: float = 0.3, seed: int = 0, val_fraction: float = 0.0
) -> dict[str, FashionMNISTTensors]:
    """scikit-learn's digits, resized to ``size``×``size`` uint8, split into ``train``, ``test``
    and, when ``val_fraction > 0``, ``val``.

    The 8×8 images (values 0–16, ink bright on a dark background, like Fashion-MNIST's objects)
    are scaled to 0–255 and upsampled with bilinear interpolation. Both splits are stratified and
    seeded: first ``test_fraction`` of all images become the test set (the same test set whatever
    ``val_fraction`` is), then ``val_fraction`` of all images are carved from the rest as the
    validation set. Choose (a strategy, an epoch, a threshold) on ``val``; the test split is for
    reporting what was chosen, once.

    Raises:
        ValueError: a fraction is outside [0, 1), or the two leave no training images.
    """
    if not 0 < test_fraction < 1 or not 0 <= val_fraction < 1:
        raise ValueError(
            f"need 0 < test_fraction < 1 and 0 <= val_fraction < 1, got {test_fraction}, "
            f"{val_fraction}"
        )
    if test_fraction + val_fraction >= 1:
        raise ValueError(
            f"test_fraction + val_fraction = {test_fraction + val_fraction:g} leaves no training "
            "images"
        )
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    images = (x.squeeze(1) * 255).round().clamp(0, 255).to(torch.uint8)
    labels = torch.tensor(digits.target, dtype=torch.long)
    y = labels.numpy()
    rest_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=test_fraction, stratify=y, random_state=seed
    )
    splits = {"test": test_idx}
    if val_fraction > 0:
        rest_idx, splits["val"] = train_test_split(
            rest_idx,
            test_size=round(val_fraction * len(y)),
            stratify=y[rest_idx],
            random_state=seed,
        )
    splits["train"] = rest_idx
    full = FashionMNISTTensors(images, labels)
    return {
        name: full.subset(torch.as_tensor(splits[name]).sort().values)
        for name in ("train", "val", "test")
        if name in splits
    }
