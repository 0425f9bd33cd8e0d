"""Fashion-MNIST's facts, without torch: the class names and the training set's pixel statistics.

:mod:`course_utils.data` (with torch) and :mod:`serving.upload` (the torch-free serving
path) both take them from here, so there is one copy.
"""

from __future__ import annotations

__all__ = ["CLASSES", "MEAN", "STD"]

CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MEAN: float = 0.2860  # of the training images' pixels scaled to [0, 1]
STD: float = 0.3530
