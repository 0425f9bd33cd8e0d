"""Checks of the chapter 6 exercises: freezing conv1, a BatchNorm block, and fine-tuning in
phases with parameter groups."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ._common import (
    aliases,
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


# --- shared ------------------------------------------------------------------------------------


def _call(
    ex: str, what: str, fn: Callable[..., object], model: nn.Module, *args: object, task: str
):
    """``fn(model, *args)``; a crash becomes a ❌ whose hint names what the model shows went wrong.

    ``NotImplementedError`` (an unfinished blank) and ``AssertionError`` (a refused shortcut)
    pass through unchanged. ``task`` is what the function should have done, for the hint.
    """
    try:
        return fn(model, *args)
    except (NotImplementedError, AssertionError):
        raise
    except Exception as err:
        problem = f"{what} raised {type(err).__name__}: {err}"
        raise failure(ex, problem, _crash_hint(model, err, task)) from err


def _crash_hint(model: nn.Module, err: Exception, task: str) -> str:
    message = str(err)
    if not any(p.requires_grad for p in model.parameters()):
        return (
            "every parameter of the model is frozen, so an optimiser built over the trainable "
            "ones gets an empty list (model.requires_grad_(False) freezes the whole model): "
            f"{task}"
        )
    if "more than one parameter group" in message:
        return (
            "a parameter is already in the optimiser when it is added again: build the "
            "optimiser over the trainable parameters only, and add the others once, with "
            "optimizer.add_param_group, when they are unfrozen."
        )
    if "empty parameter list" in message:
        return f"the optimiser was given no parameters: {task}"
    return f"the error above comes from your function; it should: {task}"


def _attribute_instead_of_flag(model: nn.Module, names: tuple[str, ...]) -> list[str]:
    """Modules on which ``.requires_grad = False`` set a plain attribute (parameters untouched)."""
    return [
        n
        for n in names
        if vars(model.get_submodule(n)).get("requires_grad") is False
        and any(p.requires_grad for p in model.get_submodule(n).parameters())
    ]


def _attribute_hint(names: list[str]) -> str:
    module = f"model.{names[0]}"
    return (
        f"{module}.requires_grad = False sets a plain attribute on the module, and its "
        f"parameters still require grad: call {module}.requires_grad_(False) (the method, "
        "with the underscore), which switches off every parameter inside."
    )


def _frozen_beyond(model: nn.Module, allowed: tuple[str, ...]) -> list[str]:
    """Parameters outside the ``allowed`` prefixes that were frozen."""
    return [
        k for k, p in model.named_parameters() if not k.startswith(allowed) and not p.requires_grad
    ]


def _one_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)
    model.train()
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()


# --- 6.1 ---------------------------------------------------------------------------------------


def check_freeze_conv1(fn: Callable[[nn.Module], torch.optim.Optimizer]) -> None:
    """Exercise 6.1: ``fn(model)`` freezes exactly ``conv1`` and returns an optimiser that holds
    only the trainable parameters; after one step conv1 is bit-identical, the rest changed."""
    ex = "6.1"
    task = "freeze model.conv1 only and return Adam over the parameters that still train."
    model = small_model()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimizer = _call(ex, "fn(model)", fn, model, task=task)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise failure(ex, f"returned {type(optimizer).__name__}", "return the optimiser.")
    params = dict(model.named_parameters())
    not_frozen = [k for k, p in params.items() if k.startswith("conv1.") and p.requires_grad]
    too_much = _frozen_beyond(model, ("conv1.",))
    if not_frozen and _attribute_instead_of_flag(model, ("conv1",)):
        raise failure(ex, f"{not_frozen} still require grad", _attribute_hint(["conv1"]))
    if not_frozen:
        raise failure(
            ex,
            f"requires_grad is still True for {not_frozen}",
            "call model.conv1.requires_grad_(False): it switches off conv1's weight and bias.",
        )
    if too_much and len(too_much) == len(params) - 2:
        raise failure(
            ex,
            f"every parameter of the model is frozen ({too_much} as well as conv1)",
            "model.requires_grad_(False) freezes the whole model: freeze model.conv1 only and "
            "leave every other layer trainable.",
        )
    if too_much:
        raise failure(
            ex,
            f"requires_grad is False for {too_much} as well as conv1",
            "freeze model.conv1 only and leave every other layer trainable.",
        )
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    frozen_held = [k for k, p in params.items() if k.startswith("conv1.") and id(p) in held]
    missing = [k for k, p in params.items() if p.requires_grad and id(p) not in held]
    if frozen_held:
        raise failure(
            ex,
            f"the optimiser holds frozen parameters {frozen_held}",
            "give it only the trainable ones: [p for p in model.parameters() if p.requires_grad]. "
            "(With weight decay or momentum, an optimiser can move a parameter without a grad.)",
        )
    if missing:
        raise failure(ex, f"the optimiser misses {missing}", "pass every trainable parameter.")
    try:
        _one_step(model, optimizer)
    except Exception as err:
        raise failure(
            ex,
            f"one training step with your optimiser raised {type(err).__name__}: {err}",
            "the check trains as a loop does (zero_grad, backward, step()); return an optimiser "
            "whose step() needs no closure, as the task asks: torch.optim.Adam(..., lr=1e-3).",
        ) from err
    after = dict(model.named_parameters())
    moved = [k for k in before if k.startswith("conv1.") and not torch.equal(before[k], after[k])]
    stuck = [k for k in before if not k.startswith("conv1.") and torch.equal(before[k], after[k])]
    if moved:
        raise failure(ex, f"{moved} changed during a step", "conv1 must be frozen.")
    if stuck:
        lrs = [float(group.get("lr", 0.0)) for group in optimizer.param_groups]
        hint = (
            "use a learning rate > 0 (e.g. Adam 1e-3)."
            if min(lrs) <= 0
            else f"measured: {stuck} bit-identical after one step with learning rates {lrs}; "
            "expected every trainable parameter to move. Return Adam(trainable, lr=1e-3)."
        )
        raise failure(ex, f"{stuck} did not change during a step", hint)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    passed(
        ex,
        f"conv1 frozen and bit-identical after a step, the other {n_train:,} parameters trained, "
        "the optimiser holds only trainable parameters",
    )


# --- 6.2 ---------------------------------------------------------------------------------------

_BLOCK1: tuple[str, ...] = ("conv1.", "bn1.")
_ADAPTING_BN: tuple[str, ...] = ("bn2", "bn_fc")  # outside block 1: must keep adapting


def check_freeze_bn_block(fn: Callable[[nn.Module], None]) -> None:
    """Exercise 6.2: ``fn(model)`` freezes block 1 (``conv1`` and ``bn1``) of a BatchNorm model so
    that training changes neither its weights nor bn1's running statistics, bn1 normalises with
    those stored statistics (and the pretrained ``eps``), and the other BatchNorm layers still
    adapt in train mode."""
    ex = "6.2"
    task = (
        "freeze conv1 and bn1 only (requires_grad_(False) on both, and bn1's statistics "
        "kept in eval mode), leaving every other layer trainable."
    )
    model = small_model(norm="batch")
    with torch.no_grad():  # give bn1 non-trivial statistics, as a pretrained model would have
        model.bn1.running_mean.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
        model.bn1.running_var.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(3))
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    stats = {k: v for k, v in before.items() if k.startswith("bn1.") and "num_batches" not in k}
    eps = float(model.bn1.eps)  # the pretrained layer's, not whatever fn leaves behind
    _call(ex, "fn(model)", fn, model, task=task)
    kept = model.state_dict()
    if any(k not in kept for k in stats):
        raise failure(
            ex,
            f"bn1 lost its statistics: model.bn1 is now {type(model.bn1).__name__}",
            "keep bn1: its running mean, variance, weight and bias are what the pretrained "
            "block learned, and the next layers expect its normalised output. Freeze it "
            "(no grads, eval-mode statistics) instead of replacing it with nn.Identity.",
        )
    rewritten = [
        k
        for k in before
        if k.startswith(_BLOCK1) and "num_batches" not in k
        if k in kept and not torch.equal(before[k], kept[k].detach())
    ]
    if rewritten:
        swapped = type(model.bn1) is not nn.BatchNorm2d
        raise failure(
            ex,
            f"fn(model) itself changed block 1's values: {rewritten}",
            f"model.bn1 is now a {type(model.bn1).__name__} that starts from default values: "
            "copy the pretrained ones into it, frozen.load_state_dict(model.bn1.state_dict()), "
            "before swapping it in."
            if swapped
            else "freezing keeps what the pretrained block learned: switch off its gradients "
            "and statistics updates, and leave its values as they are.",
        )
    still = [k for k, p in model.named_parameters() if k.startswith(_BLOCK1) and p.requires_grad]
    if still:
        attribute = _attribute_instead_of_flag(model, ("conv1", "bn1"))
        hint = _attribute_hint(attribute) if attribute else "requires_grad_(False) on conv1, bn1."
        raise failure(ex, f"{still} still require grad", hint)
    beyond = _frozen_beyond(model, _BLOCK1)
    if beyond:
        everything = not any(p.requires_grad for p in model.parameters())
        raise failure(
            ex,
            f"you froze more than block 1: {beyond}"
            + (" (every parameter of the model is frozen)" if everything else ""),
            "freeze conv1 and bn1 only; model.requires_grad_(False) freezes the whole model, "
            "and then nothing is left to train on the new data.",
        )
    try:
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        model.train()  # what every training loop does at the start of an epoch
        for _ in range(2):
            _one_step(model, optimizer)
    except Exception as err:
        raise failure(
            ex,
            f"training your frozen model (model.train(), forward, backward, step) raised "
            f"{type(err).__name__}: {err}",
            _training_crash_hint(model),
        ) from err
    after = model.state_dict()
    drift = [
        k
        for k in before
        if k.startswith(_BLOCK1) and "num_batches" not in k
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
    _check_other_bn_adapt(ex, model, before, after)
    _check_bn1_uses_stored_statistics(ex, model, stats, eps)
    if torch.equal(before["fc2.weight"], after["fc2.weight"]):
        raise failure(ex, "fc2 did not train", "freeze block 1 only.")
    passed(ex, "conv1 and bn1 (weights and running statistics) unchanged through train-mode steps")


def _training_crash_hint(model: nn.Module) -> str:
    hooked = [n or "the model" for n, m in model.named_modules() if m._forward_pre_hooks]
    if hooked:
        return (
            f"{', '.join(hooked)} has a forward pre-hook: it must return None, because a value "
            "it returns replaces the layer's input (m.eval() returns the module itself). Set "
            "m.training = False inside the hook and return nothing."
        )
    return (
        "the check trains your model as any training loop would; the error above says which "
        "layer failed. Freezing changes flags and modes, not how a layer is called."
    )


def _check_other_bn_adapt(
    ex: str, model: nn.Module, before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]
) -> None:
    """Outside block 1, BatchNorm must still adapt its statistics in train mode."""
    stuck = [
        name
        for name in _ADAPTING_BN
        if f"{name}.running_mean" in before
        and torch.equal(before[f"{name}.running_mean"], after[f"{name}.running_mean"])
    ]
    if stuck:
        raise failure(
            ex,
            f"{', '.join(stuck)} did not update {'its' if len(stuck) == 1 else 'their'} running "
            "statistics during train-mode steps: the freezing reached beyond block 1",
            "keep bn1 alone in eval mode (a pre-hook on model.bn1 only): eval() on the whole "
            "model, a hook on the model, or a patched model.train() also freezes "
            f"{' and '.join(stuck)}, which should adapt to the new data.",
        )


def _check_bn1_uses_stored_statistics(
    ex: str, model: nn.Module, stats: dict[str, torch.Tensor], eps: float
) -> None:
    """In train mode, bn1 must normalise with its stored statistics (and the pretrained eps)."""
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
    if not seen:
        raise failure(
            ex,
            "bn1 did not run in the model's forward pass",
            "freeze bn1 where it is; the model must still call it (conv1 → bn1 → ReLU).",
        )
    h, out = seen[0]

    def channel(name: str) -> torch.Tensor:
        return stats[f"bn1.{name}"][None, :, None, None]

    def normalised(mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        return (h - mean) / torch.sqrt(var + eps) * channel("weight") + channel("bias")

    expected = normalised(channel("running_mean"), channel("running_var"))
    if torch.allclose(out, expected, atol=1e-4, rtol=1e-4):
        return
    per_batch = normalised(
        h.mean(dim=(0, 2, 3), keepdim=True), h.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    )
    bn1 = model.bn1
    if torch.allclose(out, per_batch, atol=1e-4, rtol=1e-4):
        problem = (
            "after model.train(), bn1 normalises a batch with that batch's own mean and "
            "variance, not with its stored statistics"
        )
        if getattr(bn1, "track_running_stats", True) is False:
            hint = (
                "track_running_stats = False makes a BatchNorm normalise every batch with its "
                "own statistics, in train and eval mode; leave it on and keep bn1 in eval mode "
                "after model.train() (a forward pre-hook setting m.training = False), or swap "
                "in torchvision's FrozenBatchNorm2d."
            )
        elif getattr(bn1, "momentum", None) == 0:
            hint = (
                "momentum = 0 only stops the statistics from moving; a frozen BatchNorm must "
                "also use them. Keep bn1 in eval mode after model.train() (a forward pre-hook "
                "setting m.training = False), or swap in torchvision's FrozenBatchNorm2d."
            )
        else:
            hint = (
                "bn1 is in train mode when it runs: keep it in eval mode after model.train() "
                "(a forward pre-hook setting m.training = False), or swap in torchvision's "
                "FrozenBatchNorm2d."
            )
        raise failure(ex, problem, hint)
    own_eps = getattr(bn1, "eps", eps)
    if own_eps != eps:
        raise failure(
            ex,
            f"bn1's eps is {own_eps:g}, the pretrained layer's was {eps:g}, so it no longer "
            "computes what the pretrained block did",
            "freeze the layer as it is: keep its eps (FrozenBatchNorm2d(n, eps=model.bn1.eps) "
            "when you swap one in).",
        )
    gap = float((out - expected).abs().max())
    raise failure(
        ex,
        f"in train mode, bn1's output differs by up to {gap:.3g} from "
        "(x - running_mean) / sqrt(running_var + eps) * weight + bias with its stored values",
        "measured bn1's output on a batch after model.train(); expected the eval-mode "
        "normalisation with the pretrained statistics, weight, bias and eps.",
    )


# --- 6.3 ---------------------------------------------------------------------------------------

BODY: tuple[str, ...] = ("conv1", "conv2")
HEAD: tuple[str, ...] = ("fc1", "fc2")
#: ``(epochs, unfreeze_after, head_lr, body_lr)`` of the two runs the check watches.
SCHEDULES: tuple[tuple[int, int, float, float], ...] = ((3, 1, 1e-2, 1e-3), (4, 2, 3e-3, 5e-4))


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

    Run with the two :data:`SCHEDULES`, which differ in every setting. Verified at every
    optimiser step and at the start of every epoch: the body is frozen (bit-identical,
    ``requires_grad`` off, not held by the optimiser) for exactly ``unfreeze_after`` epochs, then
    held in its own group at ``body_lr`` and moving; the head's group has ``head_lr``.
    ``course_utils.transfer``'s freeze/unfreeze/trainable_parameters are switched off.
    """
    ex = "6.3"
    g = torch.Generator().manual_seed(4)
    data = [
        (torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g))
        for _ in range(2)
    ]
    shortcuts = _fine_tune_shortcuts()
    # Two schedules that differ in every setting, and in the ratio body_lr / head_lr (1/10,
    # then 1/6): an answer that hard-codes the epochs, the unfreeze epoch or "head_lr / 10"
    # passes at most one of them.
    for epochs, k, head_lr, body_lr in SCHEDULES:
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
                optimizer = _call(
                    ex,
                    f"fn(model, batches, {epochs}, {k}, {head_lr}, {body_lr})",
                    fn,
                    model,
                    batches,
                    epochs,
                    k,
                    head_lr,
                    body_lr,
                    task="freeze conv1 and conv2, build Adam over fc1 and fc2 at head_lr, and "
                    "add the body as its own group at body_lr when epoch == unfreeze_after.",
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
                f"the body is frozen (requires_grad_(False)) for the first {k} epoch(s) and "
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
                    _lr_hint(part, lr, head_lr, body_lr),
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


def _lr_hint(part: str, lr: float, head_lr: float, body_lr: float) -> str:
    """Name the learning rate the group got instead, where it is one of the usual slips."""

    def near(a: float, b: float) -> bool:
        return abs(a - b) <= 1e-9 * max(abs(a), abs(b), 1e-12)

    if part == "body" and near(lr, head_lr):
        slip = "that is head_lr: the body got the head's rate. "
    elif part == "body" and near(lr, head_lr / 10):
        slip = "that is head_lr / 10, a fixed factor, not the body_lr argument. "
    elif part == "head" and near(lr, body_lr):
        slip = "that is body_lr: head and body rates are swapped. "
    else:
        slip = ""
    return f"{slip}The head trains at head_lr, the unfrozen body at the smaller body_lr."
