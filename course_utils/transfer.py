"""Transfer learning: freezing layers (and proving it), and the digits target data set.

The target is scikit-learn's ``load_digits``: 1,797 real 8×8 scans of handwritten digits (pixel
values 0–16), resized to 28×28 and stored as uint8 like Fashion-MNIST, so the course's
``TensorLoader`` normalises them with the source's mean and std, exactly as the pretrained
network expects its inputs.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .data import FashionMNISTTensors

__all__ = [
    "DIGIT_CLASSES",
    "changed_parameters",
    "freeze",
    "load_digits_tensors",
    "parameter_counts",
    "snapshot",
    "trainable_parameters",
]

DIGIT_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))


def freeze(model: nn.Module, names: Iterable[str]) -> list[str]:
    """Freeze the named submodules: ``requires_grad_(False)`` on their parameters, and their
    BatchNorm layers kept in eval mode.

    A frozen BatchNorm must not update its running mean and variance either: in train mode it
    would, even with ``requires_grad=False``. A forward pre-hook puts each such layer back in eval
    mode before every call, so a later ``model.train()`` cannot undo it.

    Returns:
        The names of the parameters that were frozen.
    """
    modules = dict(model.named_modules())
    frozen = []
    for name in names:
        if name not in modules:
            known = [n for n in modules if n]
            raise KeyError(f"no submodule named {name!r}; the model has {known}")
        module = modules[name]
        for pname, p in module.named_parameters():
            p.requires_grad_(False)
            frozen.append(f"{name}.{pname}")
        for sub in module.modules():
            if isinstance(sub, _BatchNorm):
                sub.eval()
                sub.register_forward_pre_hook(_keep_eval)
    return frozen


def _keep_eval(module: nn.Module, _args: object) -> None:
    """Forward pre-hook: run a frozen BatchNorm in eval mode (returns None: inputs unchanged)."""
    module.training = False


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
    """Names of the ``state_dict`` entries that are not bit-identical to ``before``."""
    now = model.state_dict()
    return [k for k, v in before.items() if not torch.equal(now[k].detach().cpu(), v)]


def load_digits_tensors(
    size: int = 28, test_fraction: float = 0.3, seed: int = 0
) -> dict[str, FashionMNISTTensors]:
    """scikit-learn's digits, resized to ``size``×``size`` uint8, split into ``train`` and ``test``.

    The 8×8 images (values 0–16, ink bright on a dark background, like Fashion-MNIST's objects)
    are scaled to 0–255 and upsampled with bilinear interpolation. The split is stratified and
    seeded; the test split is for the final comparison only.
    """
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    images = (x.squeeze(1) * 255).round().clamp(0, 255).to(torch.uint8)
    labels = torch.tensor(digits.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(
        torch.arange(len(labels)).numpy(),
        test_size=test_fraction,
        stratify=labels.numpy(),
        random_state=seed,
    )
    full = FashionMNISTTensors(images, labels)
    return {
        "train": full.subset(torch.as_tensor(train_idx).sort().values),
        "test": full.subset(torch.as_tensor(test_idx).sort().values),
    }
