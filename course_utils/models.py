"""The course's CNN: chapter 1's architecture (the original cheat sheet's), with the knobs that
chapters 2–4 turn.

``conv(1→32) → pool → conv(32→64) → pool → fc(128) → fc(10)``, with optional BatchNorm, a choice
of activation and dropout. The flatten size is computed from the input, never hard-coded, so the
same class works for any input of at least 28×28 pixels (given as ``input_size``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["ACTIVATIONS", "FashionCNN", "count_parameters"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


class FashionCNN(nn.Module):
    """A two-block CNN for 1-channel images, configurable for the chapter experiments.

    Args:
        num_classes: output logits.
        in_channels: input image channels.
        width: channels of the first conv; the second has ``2 * width``.
        hidden: units of the first fully connected layer.
        norm: ``"none"`` or ``"batch"`` (BatchNorm2d after each conv, BatchNorm1d after fc1).
        activation: a key of :data:`ACTIVATIONS`.
        dropout: dropout probability after fc1's activation (after the last BatchNorm).
        conv_dropout: Dropout2d probability after each pooling stage. With
            ``norm="batch"`` it runs *before* ``bn2`` and ``bn_fc`` (chapter 4 discusses it).
        input_size: image height and width (an int for square images), at least 28.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        width: int = 32,
        hidden: int = 128,
        norm: str = "none",
        activation: str = "relu",
        dropout: float = 0.0,
        conv_dropout: float = 0.0,
        input_size: int | tuple[int, int] = 28,
    ) -> None:
        super().__init__()
        if norm not in ("none", "batch"):
            raise ValueError(f"norm must be 'none' or 'batch', got {norm!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.config: dict[str, Any] = {
            "num_classes": num_classes,
            "in_channels": in_channels,
            "width": width,
            "hidden": hidden,
            "norm": norm,
            "activation": activation,
            "dropout": dropout,
            "conv_dropout": conv_dropout,
            "input_size": input_size,
        }
        act = ACTIVATIONS[activation]
        use_bn = norm == "batch"
        # tuple(): a list (e.g. a config read back from JSON) must compare equal to x.shape[-2:].
        size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        self.input_size: tuple[int, int] = size
        if min(self.input_size) < 28:
            raise ValueError(f"input_size must be at least 28×28, got {self.input_size}")

        def maybe(flag: bool, layer: nn.Module) -> nn.Module:
            return layer if flag else nn.Identity()

        # Block 1 and block 2: conv → (BN) → activation → 2×2 max-pool → (Dropout2d).
        # With BatchNorm right after a conv, the conv's bias is redundant (BN subtracts the mean).
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=not use_bn)
        self.bn1 = maybe(use_bn, nn.BatchNorm2d(width))
        self.act1 = act()
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=not use_bn)
        self.bn2 = maybe(use_bn, nn.BatchNorm2d(2 * width))
        self.act2 = act()
        self.pool = nn.MaxPool2d(2)
        self.conv_dropout = maybe(conv_dropout > 0, nn.Dropout2d(conv_dropout))
        # The flatten size comes from one dummy forward pass, not from typing 64 * 7 * 7.
        # (in eval mode, so the dummy batch leaves no trace in BatchNorm's running statistics).
        self.eval()
        with torch.no_grad():
            n_flat = self.features(torch.zeros(1, in_channels, *self.input_size)).shape[1]
        self.train()
        self.fc1 = nn.Linear(n_flat, hidden, bias=not use_bn)
        self.bn_fc = maybe(use_bn, nn.BatchNorm1d(hidden))
        self.act3 = act()
        self.dropout = maybe(dropout > 0, nn.Dropout(dropout))
        self.fc2 = nn.Linear(hidden, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The two conv blocks, flattened to ``[batch, n_flat]``."""
        x = self.conv_dropout(self.pool(self.act1(self.bn1(self.conv1(x)))))
        x = self.conv_dropout(self.pool(self.act2(self.bn2(self.conv2(x)))))
        return torch.flatten(x, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(
                f"this FashionCNN was built for {self.input_size[0]}×{self.input_size[1]} inputs, "
                f"got {tuple(x.shape)}; build it with input_size={tuple(x.shape[-2:])}"
            )
        x = self.dropout(self.act3(self.bn_fc(self.fc1(self.features(x)))))
        return self.fc2(x)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
