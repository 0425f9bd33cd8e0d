"""``course_utils.plots``: what each figure draws, the display conversion, the source listing."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from course_utils.data import MEAN, STD
from course_utils.plots import (
    display_image,
    plot_confusion_matrix,
    plot_history,
    plot_misclassified,
    show_source,
)
from course_utils.transfer import freeze


@pytest.fixture(autouse=True)
def _close_figures() -> None:
    yield
    plt.close("all")


def test_show_source_lists_the_function_highlighted() -> None:
    code = show_source(freeze)
    assert code.data.startswith("def freeze(")
    assert "requires_grad_(False)" in code.data
    assert 'class="' in code._repr_html_()  # highlighted, not plain text


def test_display_image_undoes_normalisation_and_scales_uint8() -> None:
    pixels = torch.tensor([[0, 51, 255]], dtype=torch.uint8)
    np.testing.assert_allclose(display_image(pixels), [0.0, 0.2, 1.0], atol=1e-6)
    normalised = (pixels.float() / 255 - MEAN) / STD
    np.testing.assert_allclose(display_image(normalised), [0.0, 0.2, 1.0], atol=1e-6)


def test_plot_history_draws_train_and_validation_per_metric() -> None:
    history = {
        "train_loss": [1.0, 0.5],
        "val_loss": [1.1, 0.7],
        "train_acc": [0.6, 0.8],
        "val_acc": [0.55, 0.75],
    }
    fig = plot_history(history, title="t")
    loss_ax, acc_ax = fig.axes
    assert loss_ax.get_ylabel() == "cross-entropy loss" and acc_ax.get_ylabel() == "accuracy"
    assert [line.get_ydata().tolist() for line in acc_ax.lines] == [[0.6, 0.8], [0.55, 0.75]]


def test_confusion_matrix_rows_are_the_true_classes() -> None:
    fig = plot_confusion_matrix([0, 0, 0, 1], [0, 1, 1, 1], classes=("a", "b"))
    matrix = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(matrix, [[1 / 3, 2 / 3], [0.0, 1.0]])


def test_misclassified_shows_only_the_wrong_predictions() -> None:
    images = torch.zeros(5, 28, 28, dtype=torch.uint8)
    fig = plot_misclassified(
        images, torch.tensor([0, 1, 2, 3, 4]), torch.tensor([0, 2, 2, 3, 0]), n=24
    )
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["Trouser\n→ Pullover", "Coat\n→ T-shirt/top"]
