"""Shared fixtures: the real Fashion-MNIST, fetched and verified once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from course_utils.data import FashionMNISTTensors, ensure_fashion_mnist, load_tensors


@pytest.fixture(scope="session")
def fashion_root() -> Path:
    """The data root (``data/`` or ``$COURSE_DATA_DIR``) holding the four verified files."""
    return ensure_fashion_mnist()


@pytest.fixture(scope="session")
def fashion_splits(fashion_root: Path) -> dict[str, FashionMNISTTensors]:
    """``train``/``val``/``test`` as uint8 tensors (the default 6,000-image val split, seed 0)."""
    return load_tensors(fashion_root)
