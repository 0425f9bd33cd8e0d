"""Shared fixtures: the real Fashion-MNIST, fetched and verified once per test session, and an
untrained model for tests where the weights do not matter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from course_utils.data import FashionMNISTTensors, ensure_fashion_mnist, load_tensors
from course_utils.models import FashionCNN


@pytest.fixture(scope="session")
def fashion_root() -> Path:
    """The data root (``data/`` or ``$COURSE_DATA_DIR``) holding the four verified files."""
    return ensure_fashion_mnist()


@pytest.fixture(scope="session")
def fashion_splits(fashion_root: Path) -> dict[str, FashionMNISTTensors]:
    """``train``/``val``/``test`` as uint8 tensors (the default 6,000-image val split, seed 0)."""
    return load_tensors(fashion_root)


@pytest.fixture(scope="module")
def model() -> FashionCNN:
    """An untrained ``FashionCNN()`` (seed 0) in eval mode, one per test module; a test that
    changes its mode or hooks restores them."""
    torch.manual_seed(0)
    return FashionCNN().eval()
