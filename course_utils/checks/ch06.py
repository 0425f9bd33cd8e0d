"""Checks of the chapter 6 exercises: transfer: freezing conv1 and a BatchNorm block."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ._common import (
    failure,
    passed,
    small_model,
)

__all__ = [
    "check_freeze_bn_block",
    "check_freeze_conv1",
]


# --- 6.1 ---------------------------------------------------------------------------------------


def _one_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)
    model.train()
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()


def check_freeze_conv1(fn: Callable[[nn.Module], torch.optim.Optimizer]) -> None:
    """Exercise 6.1: ``fn(model)`` freezes exactly ``conv1`` and returns an optimiser that holds
    only the trainable parameters; after one step conv1 is bit-identical, the rest changed."""
    ex = "6.1"
    model = small_model()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    try:
        optimizer = fn(model)
    except NotImplementedError:
        raise
    except Exception as err:
        raise failure(ex, f"raised {type(err).__name__}: {err}", "see the task text.") from err
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise failure(ex, f"returned {type(optimizer).__name__}", "return the optimiser.")
    grad_flags = {k: p.requires_grad for k, p in model.named_parameters()}
    wrong = [k for k, flag in grad_flags.items() if flag == k.startswith("conv1.")]
    if wrong:
        raise failure(
            ex,
            f"requires_grad is wrong for {wrong}",
            "call model.conv1.requires_grad_(False) and leave every other layer trainable.",
        )
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    named = list(model.named_parameters())
    frozen_held = [k for k, p in named if k.startswith("conv1.") and id(p) in held]
    missing = [k for k, p in model.named_parameters() if p.requires_grad and id(p) not in held]
    if frozen_held:
        raise failure(
            ex,
            f"the optimiser holds frozen parameters {frozen_held}",
            "give it only the trainable ones: [p for p in model.parameters() if p.requires_grad]. "
            "(With weight decay or momentum, an optimiser can move a parameter without a grad.)",
        )
    if missing:
        raise failure(ex, f"the optimiser misses {missing}", "pass every trainable parameter.")
    _one_step(model, optimizer)
    after = dict(model.named_parameters())
    moved = [k for k in before if k.startswith("conv1.") and not torch.equal(before[k], after[k])]
    stuck = [k for k in before if not k.startswith("conv1.") and torch.equal(before[k], after[k])]
    if moved:
        raise failure(ex, f"{moved} changed during a step", "conv1 must be frozen.")
    if stuck:
        raise failure(
            ex, f"{stuck} did not change during a step", "use a learning rate > 0 (e.g. Adam 1e-3)."
        )
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    passed(
        ex,
        f"conv1 frozen and bit-identical after a step, the other {n_train:,} parameters trained, "
        "the optimiser holds only trainable parameters",
    )


# --- 6.2 ---------------------------------------------------------------------------------------


def check_freeze_bn_block(fn: Callable[[nn.Module], None]) -> None:
    """Exercise 6.2: ``fn(model)`` freezes block 1 (``conv1`` and ``bn1``) of a BatchNorm model so
    that training changes neither its weights nor bn1's running statistics."""
    ex = "6.2"
    model = small_model(norm="batch")
    with torch.no_grad():  # give bn1 non-trivial statistics, as a pretrained model would have
        model.bn1.running_mean.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
        model.bn1.running_var.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(3))
    block1 = ("conv1.", "bn1.")
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        fn(model)
    except NotImplementedError:
        raise
    except Exception as err:
        raise failure(ex, f"raised {type(err).__name__}: {err}", "see the task text.") from err
    still = [k for k, p in model.named_parameters() if k.startswith(block1) and p.requires_grad]
    if still:
        raise failure(ex, f"{still} still require grad", "requires_grad_(False) on conv1, bn1.")
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    model.train()  # what every training loop does at the start of an epoch
    for _ in range(2):
        _one_step(model, optimizer)
    after = model.state_dict()
    drift = [
        k
        for k in before
        if k.startswith(block1) and "num_batches" not in k
        if not torch.equal(before[k], after[k])
    ]
    if drift:
        raise failure(
            ex,
            f"block 1 changed during training: {drift}",
            "frozen weights are not enough: a BatchNorm in train mode still updates its running "
            "mean and variance. Keep bn1 in eval mode even after model.train(), e.g. with "
            "a forward pre-hook on bn1 that sets m.training = False (and returns None).",
        )
    if torch.equal(before["fc2.weight"], after["fc2.weight"]):
        raise failure(ex, "fc2 did not train", "freeze block 1 only.")
    passed(ex, "conv1 and bn1 (weights and running statistics) unchanged through train-mode steps")
