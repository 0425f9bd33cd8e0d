"""``course_utils.speedrun``: the fast recipe's schedule, evaluation and determinism (tiny runs,
about 3 s in all; its speed is the benchmark's business, not a test's)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from course_utils import speedrun
from course_utils.data import FashionMNISTTensors
from course_utils.models import FashionCNN
from course_utils.speedrun import Recipe, _schedule, accuracy_tta, train_recipe


def fake_split(n: int, seed: int = 0) -> FashionMNISTTensors:
    """``n`` random uint8 images with random labels (enough to exercise the loop)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    return FashionMNISTTensors(images, labels)


def test_schedule_rises_to_one_at_the_warmup_then_falls_to_zero() -> None:
    factors = _schedule(10, 0.2).tolist()
    assert len(factors) == 10
    assert factors[:2] == pytest.approx([0.5, 1.0]) and factors[-1] == 0.0
    assert all(a > b for a, b in zip(factors[1:], factors[2:], strict=False))


def test_tta_adds_the_logits_of_the_mirror_images() -> None:
    """A model that reads only the left half: with TTA its prediction uses both halves."""
    data = fake_split(64)
    torch.manual_seed(0)
    model = FashionCNN(width=4).eval()
    with torch.no_grad():
        x = (data.images.unsqueeze(1).float() / 255 - 0.2860) / 0.3530
        plain = (model(x).argmax(1) == data.labels).float().mean().item()
        both = ((model(x) + model(x.flip(-1))).argmax(1) == data.labels).float().mean().item()
    assert accuracy_tta(model, data, tta=False) == pytest.approx(plain)
    assert accuracy_tta(model, data, tta=True) == pytest.approx(both)
    assert plain != both, "pick another seed: the check cannot tell TTA from no TTA"


def test_a_run_is_reproducible_and_checkpoints_are_timed() -> None:
    train, test = fake_split(512), fake_split(128, seed=1)
    recipe = Recipe(epochs=2, width=4, batch_size=64, ema=0.9)
    a = train_recipe(train, test, recipe, seed=3, checkpoint_epochs=(1, 2))
    b = train_recipe(train, test, recipe, seed=3)
    assert a.accuracy == b.accuracy
    assert [c["epoch"] for c in a.checkpoints] == [1, 2]
    assert 0 < a.checkpoints[0]["seconds"] < a.checkpoints[1]["seconds"] == a.seconds
    assert a.checkpoints[-1]["accuracy"] == a.accuracy


def test_checkpoints_evaluate_their_own_split_and_the_end_evaluates_once() -> None:
    """With ``checkpoint_on`` (validation), the curve never touches the evaluated (test) split."""
    train, val, test = fake_split(512), fake_split(97, seed=1), fake_split(64, seed=2)
    recipe = Recipe(epochs=2, width=4, batch_size=64)
    run = train_recipe(train, test, recipe, seed=3, checkpoint_epochs=(1, 2), checkpoint_on=val)
    assert all(round(c["accuracy"] * 97, 6).is_integer() for c in run.checkpoints)
    assert [c["epoch"] for c in run.checkpoints] == [1, 2]
    assert run.accuracy == train_recipe(train, test, recipe, seed=3).accuracy
    assert round(run.accuracy * 64, 6).is_integer()


def test_weight_decay_spares_biases_and_norm_parameters(monkeypatch) -> None:
    """Conv and linear weights decay; biases and BatchNorm parameters do not; each parameter is
    in exactly one group (the optimizer is spied on, then the run stopped before training)."""
    seen: dict[str, object] = {}
    real_sgd = torch.optim.SGD

    class Built(Exception):
        pass

    def model(**kwargs) -> FashionCNN:
        seen["model"] = FashionCNN(**kwargs)
        return seen["model"]

    def sgd(groups, **kwargs) -> None:
        seen["groups"] = real_sgd(groups, **kwargs).param_groups
        raise Built

    monkeypatch.setattr(speedrun, "FashionCNN", model)
    monkeypatch.setattr(torch.optim, "SGD", sgd)
    recipe = Recipe(width=4, batch_size=64)
    with pytest.raises(Built):
        train_recipe(fake_split(128), fake_split(64), recipe)
    should_decay, should_not = [], []
    for prefix, module in seen["model"].named_modules():
        for name, _ in module.named_parameters(prefix, recurse=False):
            weight = isinstance(module, nn.Conv2d | nn.Linear) and name.endswith(".weight")
            (should_decay if weight else should_not).append(name)
    assert any(".bias" in n for n in should_not) and any("bn" in n for n in should_not)
    names = {id(p): name for name, p in seen["model"].named_parameters()}
    decay, no_decay = ([names[id(p)] for p in g["params"]] for g in seen["groups"])
    assert sorted(decay) == sorted(should_decay)  # sorted lists: a duplicate would show
    assert sorted(no_decay) == sorted(should_not)
    assert [g["weight_decay"] for g in seen["groups"]] == [recipe.weight_decay, 0.0]
