"""The course's fast recipe, aimed at 93% Fashion-MNIST test accuracy in 90 s on a 2-core CPU.

``python -m course_utils.build.bench`` measures how close it comes (3 seeds, each reported).

The appendix "Training fast" builds this recipe one change at a time and writes each step out;
this module is the same recipe as one function, for the benchmark and for later reuse:

* data as uint8 tensors in memory, batches normalised on the fly (:class:`~.data.TensorLoader`),
  with random horizontal flips and small shifts;
* chapter 1's CNN with BatchNorm (chapter 2) at half its width (16 and 32 channels),
  ``channels_last`` and bfloat16 autocast where bf16 is native (:func:`~.train.bf16_pays`);
* batch 256, SGD with Nesterov momentum, a triangular learning-rate schedule (linear warm-up,
  linear decay to zero), label smoothing and weight decay;
* 16 epochs, evaluated with horizontal-flip test-time augmentation (an exponential moving
  average of the weights is available, ``ema``, but did not help on validation).

Hyper-parameters were chosen on the validation split; :func:`train_recipe` evaluates the
split it is given, once at the end (and, if asked, at fixed epochs with the clock stopped).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .data import FashionMNISTTensors, TensorLoader
from .models import FashionCNN
from .train import bf16_pays, eval_mode, seed_everything

__all__ = ["Recipe", "RecipeRun", "accuracy_tta", "train_recipe"]


@dataclass(frozen=True)
class Recipe:
    """The knobs of the fast recipe (defaults: the recipe chosen on the validation split)."""

    epochs: int = 16
    batch_size: int = 256
    lr: float = 0.4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup: float = 0.2  # fraction of the steps spent warming the learning rate up
    label_smoothing: float = 0.1
    augment: bool = True
    ema: float = 0.0  # EMA decay per step (0: no averaging)
    tta: bool = True
    dropout: float = 0.0
    width: int = 16  # FashionCNN's first conv width (the second has twice as many)
    channels_last: bool = True
    bf16: bool | None = None  # None: where it pays (see train.bf16_pays)

    def to_dict(self) -> dict[str, object]:
        """Plain values, for JSON."""
        return asdict(self)


@dataclass
class RecipeRun:
    """What one timed run measured. ``seconds``: training wall time (the clock stops while the
    optional checkpoint evaluations run); ``accuracy``: on the evaluated split at the end."""

    seed: int
    seconds: float
    accuracy: float
    eval_seconds: float
    checkpoints: list[dict[str, float]] = field(default_factory=list)


def accuracy_tta(
    model: nn.Module,
    data: FashionMNISTTensors,
    tta: bool,
    bf16: bool = False,
    batch_size: int = 1000,
) -> float:
    """Accuracy of ``model`` on ``data``; with ``tta`` the logits of each image and of its
    horizontal mirror are summed. ``bf16``: under bfloat16 autocast."""
    device = next(model.parameters()).device
    correct = 0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    with eval_mode(model), torch.no_grad(), autocast:
        for x, y in TensorLoader(data, batch_size, device=device):
            logits = model(x)
            if tta:
                logits = logits + model(x.flip(-1))
            correct += (logits.argmax(1) == y).sum().item()
    return correct / len(data)


def _schedule(total_steps: int, warmup: float) -> torch.Tensor:
    """Learning-rate factors per step: linear 0 → 1 over the warm-up, then 1 → 0."""
    peak = max(1, round(total_steps * warmup))
    up = torch.linspace(0, 1, peak + 1)[1:]
    down = torch.linspace(1, 0, total_steps - peak + 1)[1:]
    return torch.cat([up, down])


def train_recipe(
    train: FashionMNISTTensors,
    evaluate_on: FashionMNISTTensors,
    recipe: Recipe = Recipe(),
    seed: int = 0,
    device: str | torch.device = "cpu",
    checkpoint_epochs: tuple[int, ...] = (),
    checkpoint_on: FashionMNISTTensors | None = None,
) -> RecipeRun:
    """Train the recipe from scratch with ``seed`` and return its time and final accuracy.

    ``evaluate_on`` is evaluated once at the end (the validation split while choosing, the test
    split to report). After each of ``checkpoint_epochs``, with the clock stopped,
    ``checkpoint_on`` is evaluated (default: ``evaluate_on``; give the validation split when
    ``evaluate_on`` is the test split, so that no curve is drawn on test).
    """
    device = torch.device(device)
    curve_split = evaluate_on if checkpoint_on is None else checkpoint_on
    bf16 = bf16_pays(device) if recipe.bf16 is None else recipe.bf16
    seed_everything(seed)
    model = FashionCNN(norm="batch", width=recipe.width, dropout=recipe.dropout).to(device)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = TensorLoader(
        train, recipe.batch_size, shuffle=True, device=device, seed=seed,
        augment=recipe.augment, drop_last=True,
    )  # fmt: skip
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]  # biases and BatchNorm
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay}],
        lr=recipe.lr, momentum=recipe.momentum, nesterov=True,
    )  # fmt: skip
    factors = _schedule(recipe.epochs * len(loader), recipe.warmup).tolist()
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    average = copy.deepcopy(model) if recipe.ema else None
    checkpoints: list[dict[str, float]] = []
    seconds, step = 0.0, 0
    for epoch in range(1, recipe.epochs + 1):
        start = time.perf_counter()
        model.train()
        for x, y in loader:
            for group in optimizer.param_groups:
                group["lr"] = recipe.lr * factors[step]
            step += 1
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if average is not None:
                with torch.no_grad():
                    for a, m in zip(
                        average.state_dict().values(), model.state_dict().values(), strict=True
                    ):
                        if a.is_floating_point():
                            a.lerp_(m, 1 - recipe.ema)
                        else:
                            a.copy_(m)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
        if epoch in checkpoint_epochs:
            final = average or model
            checkpoints.append(
                {"epoch": epoch, "seconds": seconds,
                 "accuracy": accuracy_tta(final, curve_split, recipe.tta, bf16)}
            )  # fmt: skip
    start = time.perf_counter()
    accuracy = accuracy_tta(average or model, evaluate_on, recipe.tta, bf16)
    eval_seconds = time.perf_counter() - start
    return RecipeRun(seed, seconds, accuracy, eval_seconds, checkpoints)
