"""course_utils.cam: Grad-CAM hooks are always removed, maps match torchcam, helpers behave."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from course_utils import cam as cam_module
from course_utils.cam import (
    GradCAM,
    gradcam_from,
    normalize_cams,
    overlay,
    pearson,
    plot_cam_columns,
    plot_cams,
    randomize_weights,
    spearman,
    torchcam_gradcam,
    upsample_cams,
)
from course_utils.hooks import hook_count
from course_utils.models import FashionCNN


@pytest.fixture(scope="module")
def model() -> FashionCNN:
    torch.manual_seed(0)
    return FashionCNN(width=8, hidden=32).eval()


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def test_hooks_exist_only_inside_the_block(model: FashionCNN, batch: torch.Tensor) -> None:
    assert hook_count(model) == 0
    with GradCAM(model, "act2") as cam:
        assert hook_count(model) == 2  # one forward, one backward hook
        maps, logits = cam(batch)
    assert hook_count(model) == 0
    assert maps.shape == (6, 14, 14) and logits.shape == (6, 10)
    assert (maps >= 0).all()
    assert all(p.grad is None for p in model.parameters()), "Grad-CAM must not touch .grad"


def test_hooks_are_removed_after_an_exception(model: FashionCNN, batch: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="built for 28×28"), GradCAM(model, "act2") as cam:
        cam(torch.zeros(1, 1, 32, 32))  # the model raises inside the block
    assert hook_count(model) == 0
    with pytest.raises(KeyboardInterrupt), GradCAM(model, model.act2):
        raise KeyboardInterrupt
    assert hook_count(model) == 0


def test_use_outside_the_block_and_bad_layers(model: FashionCNN, batch: torch.Tensor) -> None:
    cam = GradCAM(model, "act2")
    with pytest.raises(RuntimeError, match="inside a `with"):
        cam(batch)
    with pytest.raises(ValueError, match="no layer 'conv3'"):
        GradCAM(model, "conv3")
    with pytest.raises(ValueError, match="not a layer"):
        GradCAM(model, torch.nn.ReLU())
    with pytest.raises(RuntimeError, match="more than once"), GradCAM(model, "pool") as cam:
        cam(batch)  # FashionCNN reuses one MaxPool2d for both blocks
    assert hook_count(model) == 0


CAM_TOL = 1e-5  # the chapter's tolerance
CLASSES = [3, 0, 9, 9, 1, 5]


def _torchcam_gaps(model: FashionCNN, batch: torch.Tensor) -> tuple[float, float]:
    """Largest difference of GradCAM's maps to torchcam's: raw (÷ torchcam's largest value)
    and after normalising both."""
    with GradCAM(model, "act2") as cam:
        ours, _ = cam(batch, class_idx=CLASSES)
    theirs = torchcam_gradcam(model, "act2", batch, CLASSES)
    raw = float((ours - theirs).abs().max() / theirs.abs().max())
    normalised = float((normalize_cams(ours) - normalize_cams(theirs)).abs().max())
    return raw, normalised


def test_maps_match_torchcam(model: FashionCNN, batch: torch.Tensor) -> None:
    raw, normalised = _torchcam_gaps(model, batch)
    assert hook_count(model) == 0
    assert raw <= CAM_TOL, f"raw maps differ from torchcam's by {raw:.2e} of their maximum"
    assert normalised <= CAM_TOL
    with GradCAM(model, "act2") as cam:
        ours, _ = cam(batch, class_idx=CLASSES)
    theirs = torchcam_gradcam(model, "act2", batch, CLASSES)
    constant = ours.flatten(1).amax(1) == 0
    r = pearson(normalize_cams(ours), normalize_cams(theirs))
    assert (r[~constant] > 0.9999).all()


# Typical Grad-CAM slips. A sum over positions instead of the mean only rescales each map,
# so it survives normalisation (it differed by 4e-5 there): the raw comparison catches it.
WRONG_WEIGHTINGS = {
    "sum instead of mean": lambda a, g: torch.relu((g.sum((2, 3), keepdim=True) * a).sum(1)),
    "no ReLU": lambda a, g: (g.mean((2, 3), keepdim=True) * a).sum(1),
    "gradient × activation, no pooling": lambda a, g: torch.relu((g * a).sum(1)),
}


@pytest.mark.parametrize("slip", WRONG_WEIGHTINGS)
def test_a_wrong_weighting_fails_torchcam_parity_by_far(
    model: FashionCNN, batch: torch.Tensor, slip: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parity measure above is no rounding test: each slip misses by ≥ 10,000× the
    tolerance."""
    monkeypatch.setattr(cam_module, "gradcam_from", WRONG_WEIGHTINGS[slip])
    raw, _ = _torchcam_gaps(model, batch)
    assert raw > 1e4 * CAM_TOL, f"{slip}: only {raw:.2e} from torchcam"


def test_default_class_is_the_prediction(model: FashionCNN, batch: torch.Tensor) -> None:
    with GradCAM(model, "conv2") as cam:
        default, logits = cam(batch)
        explicit, _ = cam(batch, class_idx=logits.argmax(1))
        one_class, _ = cam(batch, class_idx=4)
    assert torch.equal(default, explicit)
    assert not torch.equal(default, one_class)


def test_gradcam_from_by_hand() -> None:
    acts = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # [1, 2 channels, 1, 2]
    grads = torch.tensor([[[[1.0, 1.0]], [[-2.0, 0.0]]]])  # channel weights: 1 and -1
    expected = torch.relu(torch.tensor([[[1.0 - 3.0, 2.0 - 0.0]]]))
    assert torch.equal(gradcam_from(acts, grads), expected)


def test_normalize_upsample_overlay() -> None:
    cams = torch.stack([torch.arange(16.0).view(4, 4), torch.full((4, 4), 3.0)])
    norm = normalize_cams(cams)
    assert norm[0].min() == 0 and abs(norm[0].max() - 1) < 1e-6
    assert torch.equal(norm[1], torch.zeros(4, 4)), "a constant map becomes zeros, not NaN"
    up = upsample_cams(norm, (28, 28))
    assert up.shape == (2, 28, 28)
    rgb = overlay(torch.full((1, 28, 28), 128, dtype=torch.uint8), norm[0])
    assert rgb.shape == (28, 28, 3) and rgb.min() >= 0 and rgb.max() <= 1


def test_plot_cams_draws_each_image_and_overlay() -> None:
    images = torch.zeros(3, 1, 28, 28, dtype=torch.uint8)
    fig = plot_cams(images, torch.rand(3, 7, 7), ["a", "b", "c"], title="t")
    assert sum(bool(ax.images) for ax in fig.axes) == 6


def test_plot_cam_columns_has_one_row_per_image() -> None:
    images = torch.zeros(2, 1, 28, 28)
    fig = plot_cam_columns(images, {"a": torch.rand(2, 7, 7), "b": torch.rand(2, 7, 7)}, ["x", "y"])
    assert len(fig.axes) == 6 and sum(bool(ax.images) for ax in fig.axes) == 6


def test_randomize_weights_changes_only_the_copy(model: FashionCNN) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    top = randomize_weights(model, ["fc2"], seed=1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    changed = {k for k, v in top.state_dict().items() if not torch.equal(before[k], v)}
    assert changed == {"fc2.weight", "fc2.bias"}
    assert torch.equal(
        randomize_weights(model, seed=1).conv1.weight, randomize_weights(model, seed=1).conv1.weight
    )
    with pytest.raises(ValueError, match="no layer"):
        randomize_weights(model, ["fc9"])


def test_correlations_match_scipy() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((3, 50))
    b = a + rng.random((3, 50))
    b[:, :10] = 0  # ties
    ours = spearman(torch.from_numpy(a), torch.from_numpy(b))
    for i in range(3):
        assert abs(ours[i] - spearmanr(a[i], b[i]).statistic) < 1e-6
        assert (
            abs(
                pearson(torch.from_numpy(a), torch.from_numpy(b))[i] - np.corrcoef(a[i], b[i])[0, 1]
            )
            < 1e-6
        )
    assert torch.isnan(pearson(torch.ones(1, 5), torch.rand(1, 5))).all()
