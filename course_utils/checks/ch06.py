"""Checks of the chapter 6 exercises: freezing conv1, a BatchNorm block, and fine-tuning in
phases with parameter groups."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ._common import (
    aliases,
    call,
    failure,
    passed,
    refuse,
    small_model,
)

__all__ = [
    "check_fine_tune",
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
    optimizer = call(ex, "fn(model)", fn, model, hint="see the task text.")
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
    stats = {k: v for k, v in before.items() if k.startswith("bn1.") and "num_batches" not in k}
    call(ex, "fn(model)", fn, model, hint="see the task text.")
    kept = model.state_dict()
    if any(k not in kept for k in stats):
        raise failure(
            ex,
            f"bn1 lost its statistics: model.bn1 is now {type(model.bn1).__name__}",
            "keep bn1: its running mean, variance, weight and bias are what the pretrained "
            "block learned, and the next layers expect its normalised output. Freeze it "
            "(no grads, eval-mode statistics) instead of replacing it with nn.Identity.",
        )
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
    _check_bn1_uses_stored_statistics(ex, model, stats)
    if torch.equal(before["fc2.weight"], after["fc2.weight"]):
        raise failure(ex, "fc2 did not train", "freeze block 1 only.")
    passed(ex, "conv1 and bn1 (weights and running statistics) unchanged through train-mode steps")


def _check_bn1_uses_stored_statistics(
    ex: str, model: nn.Module, stats: dict[str, torch.Tensor]
) -> None:
    """In train mode, bn1 must normalise with its stored statistics, not the batch's."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    handle = model.bn1.register_forward_hook(
        lambda _m, args, out: seen.append((args[0].detach(), out.detach()))
    )
    model.train()
    try:
        with torch.no_grad():
            model(torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(5)) + 1.0)
    finally:
        handle.remove()
    h, out = seen[0]
    eps = float(getattr(model.bn1, "eps", 1e-5))

    def channel(name: str) -> torch.Tensor:
        return stats[f"bn1.{name}"][None, :, None, None]

    expected = (h - channel("running_mean")) / torch.sqrt(channel("running_var") + eps)
    expected = expected * channel("weight") + channel("bias")
    if not torch.allclose(out, expected, atol=1e-4, rtol=1e-4):
        raise failure(
            ex,
            "after model.train(), bn1 normalises a batch with that batch's own mean and "
            "variance, not with its stored statistics",
            "momentum = 0 only stops the statistics from moving; a frozen BatchNorm must also "
            "use them. Keep bn1 in eval mode after model.train() (a forward pre-hook setting "
            "m.training = False), or swap in torchvision's FrozenBatchNorm2d.",
        )


# --- 6.3 ---------------------------------------------------------------------------------------

BODY: tuple[str, ...] = ("conv1", "conv2")
HEAD: tuple[str, ...] = ("fc1", "fc2")


class _EpochWatcher:
    """Batches that snapshot the model at the start of every pass over them (every epoch)."""

    def __init__(self, model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.model, self.batches = model, batches
        self.starts: list[dict[str, torch.Tensor]] = []
        self.grad_flags: list[dict[str, bool]] = []

    def __iter__(self):
        params = dict(self.model.named_parameters())
        self.starts.append({k: p.detach().clone() for k, p in params.items()})
        self.grad_flags.append({k: p.requires_grad for k, p in params.items()})
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _fine_tune_shortcuts() -> list[tuple[object, str]]:
    from .. import transfer

    return [(transfer, "freeze"), (transfer, "unfreeze"), (transfer, "trainable_parameters")]


def check_fine_tune(fn: Callable[..., torch.optim.Optimizer]) -> None:
    """Exercise 6.3: ``fn(model, batches, epochs, unfreeze_after, head_lr, body_lr)`` trains the
    head (fc1, fc2) with the body (conv1, conv2) frozen, then unfreezes the body after
    ``unfreeze_after`` epochs and trains it at ``body_lr`` in its own parameter group.

    Run with two schedules and learning-rate pairs. Verified at every optimiser step and at the
    start of every epoch: the body is frozen (bit-identical, ``requires_grad`` off, not held by
    the optimiser) for exactly ``unfreeze_after`` epochs, then held in its own group at
    ``body_lr`` and moving; the head's group has ``head_lr``. ``course_utils.transfer``'s
    freeze/unfreeze/trainable_parameters are switched off.
    """
    ex = "6.3"
    g = torch.Generator().manual_seed(4)
    data = [
        (torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g))
        for _ in range(2)
    ]
    shortcuts = _fine_tune_shortcuts()
    for epochs, k, head_lr, body_lr in ((3, 1, 1e-2, 1e-3), (3, 2, 3e-3, 3e-4)):
        case = f"epochs={epochs}, unfreeze_after={k}, head_lr={head_lr}, body_lr={body_lr}"
        model = small_model(seed=k)
        params = dict(model.named_parameters())
        body = {n for n in params if n.startswith(tuple(f"{b}." for b in BODY))}
        head = set(params) - body
        name_of = {id(p): n for n, p in params.items()}
        batches = _EpochWatcher(model, data)
        steps: list[tuple[int, list[tuple[set[str], float]]]] = []

        def record(
            optimizer: torch.optim.Optimizer,
            *_: object,
            name_of: dict[int, str] = name_of,
            steps: list = steps,
            batches: _EpochWatcher = batches,
        ) -> None:
            groups = [
                ({name_of.get(id(p), "?") for p in group["params"]}, float(group["lr"]))
                for group in optimizer.param_groups
            ]
            steps.append((len(batches.starts) - 1, groups))

        handle = register_optimizer_step_pre_hook(record)
        try:
            with refuse(ex, [*shortcuts, *aliases([fn], shortcuts)], "freezing and unfreezing"):
                optimizer = call(
                    ex,
                    f"fn(model, batches, {epochs}, {k}, {head_lr}, {body_lr})",
                    fn,
                    model,
                    batches,
                    epochs,
                    k,
                    head_lr,
                    body_lr,
                    hint="read the error above.",
                )
        finally:
            handle.remove()
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise failure(ex, f"returned {type(optimizer).__name__}", "return the optimiser.")
        if len(batches.starts) != epochs:
            raise failure(
                ex,
                f"({case}) iterated over the batches {len(batches.starts)} times, "
                f"expected {epochs} (one pass per epoch)",
                "loop `for epoch in range(epochs): for x, y in batches: ...`.",
            )
        _check_phases(ex, case, batches, steps, body, head, k, head_lr, body_lr)
        final = dict(model.named_parameters())
        moved = {n for n in body if not torch.equal(batches.starts[k][n], final[n])}
        stuck = sorted(body - moved)
        if stuck:
            raise failure(
                ex,
                f"({case}) after unfreezing, {stuck} did not move",
                "requires_grad_(True) is not enough: give the body to the optimiser with "
                "optimizer.add_param_group({'params': body, 'lr': body_lr}).",
            )
    passed(
        ex,
        "for 2 schedules: body frozen bit-identical and outside the optimiser for exactly "
        "unfreeze_after epochs, then in its own group at body_lr and moving; head at head_lr",
    )


def _check_phases(
    ex: str,
    case: str,
    batches: _EpochWatcher,
    steps: list[tuple[int, list[tuple[set[str], float]]]],
    body: set[str],
    head: set[str],
    k: int,
    head_lr: float,
    body_lr: float,
) -> None:
    """The frozen and unfrozen phases, from the epoch-start snapshots and the optimiser steps."""
    first = batches.starts[0]
    for epoch, (start, flags) in enumerate(zip(batches.starts, batches.grad_flags, strict=True)):
        frozen = epoch < k
        wrong = sorted(n for n in body if flags[n] == frozen)
        if wrong:
            state = "trainable" if frozen else "still frozen"
            raise failure(
                ex,
                f"({case}) at the start of epoch {epoch}, {wrong} were {state}",
                f"the body is frozen (requires_grad_(False)) for epochs 0..{k - 1} and "
                f"unfrozen at the start of epoch {k}: unfreeze when epoch == unfreeze_after.",
            )
        if not all(flags[n] for n in head):
            raise failure(ex, f"({case}) the head was frozen", "freeze conv1 and conv2 only.")
        if epoch <= k:
            moved = sorted(n for n in body if not torch.equal(start[n], first[n]))
            if moved:
                raise failure(
                    ex,
                    f"({case}) {moved} changed during the frozen phase (before epoch {epoch})",
                    "freeze the body before the first step and keep it out of the optimiser.",
                )
    if len(batches.starts) > 1 and all(torch.equal(batches.starts[1][n], first[n]) for n in head):
        raise failure(ex, f"({case}) the head did not train in epoch 0", "train the head.")
    if not steps:
        raise failure(ex, f"({case}) no optimiser step was taken", "call optimizer.step().")
    for epoch, groups in steps:
        where = f"({case}) at a step in epoch {epoch}"
        held = set().union(*(names for names, _ in groups))
        if epoch < k and held & body:
            raise failure(
                ex,
                f"{where}, the optimiser held frozen parameters {sorted(held & body)}",
                "build the optimiser over the head only; add the body with "
                "optimizer.add_param_group when you unfreeze it.",
            )
        for names, lr in groups:
            if names & head and names & body:
                raise failure(
                    ex,
                    f"{where}, one parameter group held both head and body",
                    "the body needs its own group (its own learning rate).",
                )
            want = head_lr if names & head else body_lr
            if names and abs(lr - want) > 1e-12 * max(1.0, want):
                part = "head" if names & head else "body"
                raise failure(
                    ex,
                    f"{where}, the {part}'s group has lr {lr:g}, expected {want:g}",
                    "the head trains at head_lr, the unfrozen body at the smaller body_lr.",
                )
        if epoch >= k and not body <= held:
            raise failure(
                ex,
                f"{where}, after unfreezing, the optimiser misses {sorted(body - held)}",
                "optimizer.add_param_group({'params': body, 'lr': body_lr}) when unfreezing.",
            )
        if not head <= held:
            raise failure(
                ex, f"{where}, the optimiser misses {sorted(head - held)}", "train the whole head."
            )
