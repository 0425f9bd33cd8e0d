"""Stage activations, filter scaling and summaries, top-activating images."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch

from course_utils.hooks import hook_count
from course_utils.inspection import (
    STAGES,
    activation_explorer,
    channel_scores,
    filters_for_display,
    plot_activation,
    plot_feature_maps,
    plot_filters,
    plot_top_activating,
    stage_activations,
    summarise_kernels,
    top_k_indices,
)
from course_utils.models import FashionCNN


def test_stage_activations_match_a_manual_forward(model: FashionCNN) -> None:
    x = torch.randn(1, 1, 28, 28)
    model.train()
    acts = stage_activations(model, x)
    assert model.training  # mode restored
    assert list(acts) == [s for s, _, _ in STAGES]
    with torch.no_grad():
        h = model.pool(model.act1(model.conv1(x)))
        torch.testing.assert_close(acts["pool1"], h)
        torch.testing.assert_close(acts["pool2"], model.pool(model.act2(model.conv2(h))))
    assert (acts["relu2"] >= 0).all()


def test_filters_for_display_scales_each_filter(model: FashionCNN) -> None:
    w = model.conv1.weight.detach().clone()
    w[0] *= 100
    out = filters_for_display(w)
    assert out.shape == (32, 3, 3)
    flat = out.flatten(1)
    torch.testing.assert_close(flat.min(1).values, torch.zeros(32))
    torch.testing.assert_close(flat.max(1).values, torch.ones(32))
    # the order of the values inside each filter is kept
    assert torch.equal(flat.argsort(1), w[:, 0].flatten(1).argsort(1))
    with pytest.raises(ValueError, match="one input channel"):
        filters_for_display(model.conv2.weight)


def test_filters_for_display_constant_filter_is_finite() -> None:
    assert torch.isfinite(filters_for_display(torch.ones(2, 1, 3, 3))).all()


def test_summarise_kernels(model: FashionCNN) -> None:
    w = model.conv2.weight.detach()
    torch.testing.assert_close(summarise_kernels(w, "mean"), w.mean(1))
    strongest = summarise_kernels(w, "strongest")
    assert strongest.shape == (64, 3, 3)
    norms = w.flatten(2).norm(dim=2)
    for o in (0, 17, 63):
        torch.testing.assert_close(strongest[o], w[o, norms[o].argmax()])
    with pytest.raises(ValueError, match="how"):
        summarise_kernels(w, "max")


def test_channel_scores_and_top_k(model: FashionCNN) -> None:
    x = torch.randn(10, 1, 28, 28)
    x[7] *= 5  # a high-contrast image lights up more channels
    batches = [(x[:6], torch.zeros(6)), (x[6:], torch.zeros(4))]
    scores = channel_scores(model, "act2", batches)
    assert scores.shape == (10, 64)
    with torch.no_grad():
        ref = model.act2(model.conv2(model.pool(model.act1(model.conv1(x))))).amax((2, 3))
    torch.testing.assert_close(scores, ref)
    mean_scores = channel_scores(model, "act2", batches, reduce="mean")
    assert (mean_scores <= scores + 1e-6).all()
    top = top_k_indices(scores, 3)
    assert top.shape == (64, 3)
    assert torch.equal(top[:, 0], scores.argmax(0))
    assert hook_count(model) == 0


def test_figures_have_titles_and_colour_bars(model: FashionCNN) -> None:
    w = model.conv1.weight.detach()[:, 0]
    fig = plot_filters({"before": w, "after": 2 * w}, title="conv1")
    images = [im for ax in fig.axes for im in ax.images]
    vmax = 2 * w.abs().max().item()
    assert {im.get_clim() for im in images} == {(-vmax, vmax)}
    assert fig._suptitle.get_text() == "conv1"
    assert any(ax.get_ylabel() == "weight" for ax in fig.axes)  # the colour bar
    x = torch.randn(1, 1, 28, 28)
    acts = stage_activations(model, x)
    plot_feature_maps(x[0], acts, channels=[0, 1])
    fig = plot_activation(x[0], acts["conv2"], "conv2", 5)
    assert "conv2, channel 5" in fig.axes[1].get_title()
    scores = channel_scores(model, "act2", [(torch.randn(6, 1, 28, 28), None)])
    plot_top_activating(torch.randn(6, 1, 28, 28), top_k_indices(scores, 2), [0, 3])
    plt.close("all")


def test_explorer_builds_and_redraws(model: FashionCNN) -> None:
    images = torch.randn(4, 1, 28, 28)
    box = activation_explorer(model, images, index=1, stage="conv2", channel=3)
    index, stage, channel = box.children[0].children
    assert (index.value, stage.value, channel.value, channel.max) == (1, "conv2", 3, 63)
    stage.value = "conv1"
    assert channel.max == 31
    plt.close("all")
