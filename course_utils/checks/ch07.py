"""Checks of the chapter 7 exercises: a Dataset over a folder of PNGs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ._common import (
    failure,
    passed,
)

__all__ = [
    "check_png_dataset",
]


# --- 7.1 ---------------------------------------------------------------------------------------


def _png_fixture(root: Any, n_per_class: int = 2) -> None:
    """A tiny ImageFolder of real-looking 28×28 grey PNGs (3 classes) under ``root``."""
    from PIL import Image

    g = np.random.default_rng(0)
    for c, name in enumerate(("0_a", "1_b", "2_c")):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(n_per_class):
            pixels = g.integers(0, 256, (28, 28), dtype=np.uint8)
            pixels[c * 5 : c * 5 + 5] = 255 - c * 40
            Image.fromarray(pixels).save(folder / f"{i}.png")


def check_png_dataset(dataset_cls: Callable[..., Any]) -> None:
    """Exercise 7.1: ``dataset_cls(root)`` yields the same ``(tensor, label)`` pairs as
    ``ImageFolder`` (grey, ToTensor, Normalize) on a temporary folder, and a truncated PNG raises
    an error that names the file instead of a bare PIL error."""
    import tempfile
    from pathlib import Path

    from torchvision import datasets, transforms

    from ..data import standard_transform
    from ..pngfolder import BadImageError

    ex = "7.1"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "pngs"
        _png_fixture(root)
        reference = datasets.ImageFolder(
            root, transform=transforms.Compose([transforms.Grayscale(1), standard_transform()])
        )
        try:
            ds = dataset_cls(root)
            n = len(ds)
            items = [ds[i] for i in range(n)] if n == len(reference) else []
        except NotImplementedError:
            raise
        except Exception as err:
            raise failure(
                ex, f"raised {type(err).__name__} on a clean folder: {err}", "see the task text."
            ) from err
        if n != len(reference):
            raise failure(
                ex, f"len() is {n}, ImageFolder finds {len(reference)}", "return len(self.samples)."
            )
        for i, ((x, y), (x_ref, y_ref)) in enumerate(zip(items, reference, strict=True)):
            if not isinstance(x, torch.Tensor) or tuple(x.shape) != tuple(x_ref.shape):
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise failure(
                    ex,
                    f"item {i} is {shape}, expected a tensor of shape {tuple(x_ref.shape)}",
                    "open with PIL, .convert('L'), then apply self.transform.",
                )
            if int(y) != y_ref:
                raise failure(
                    ex,
                    f"item {i} has label {y}, expected {y_ref}",
                    "return the label stored with the path in self.samples.",
                )
            if not torch.allclose(x, x_ref, atol=1e-6):
                hint = (
                    "values differ from ImageFolder's: normalise with Fashion-MNIST's mean/std "
                    "(self.transform does it), and read the file of item i (self.samples[i])."
                )
                raise failure(ex, f"item {i}'s pixels differ from ImageFolder's", hint)
        bad = root / "1_b" / "1.png"
        data = bad.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
        try:
            ds = dataset_cls(root)
            for i in range(len(ds)):
                ds[i]
        except NotImplementedError:
            raise
        except Exception as err:
            if "1.png" not in str(err) or not isinstance(err, (BadImageError, ValueError)):
                raise failure(
                    ex,
                    f"a truncated PNG raised {type(err).__name__}: {str(err)[:120]!r}",
                    "catch PIL's OSError in __getitem__ and raise BadImageError(f'{path}: "
                    "...') from it, so the message names the file (also inside a worker).",
                ) from err
        else:
            raise failure(
                ex,
                "a truncated PNG was read without an error",
                "call img.load() (or .convert) inside the try: PIL decodes lazily.",
            )
    passed(
        ex,
        f"{n} items match ImageFolder (tensors and labels); a truncated PNG raises an error "
        "naming the file",
    )
