"""Checks of the chapter 6 exercises: freezing conv1, a BatchNorm block, fine-tuning in phases."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook as on_every_step

from .. import transfer
from ..hooks import capture_activations
from ..transfer import changed_parameters, parameter_counts, snapshot
from ._common import aliases, failure, passed, raise_first, refuse, small_model

__all__ = ["check_fine_tune", "check_freeze_bn_block", "check_freeze_conv1"]

BODY = ("conv1", "conv2")  # 6.3 freezes these first; the head (fc1, fc2) trains throughout
#: ``(epochs, unfreeze_after, head_lr, body_lr)`` of 6.3: they differ in every setting and in
#: body_lr / head_lr, so hard-coded epochs or "head_lr / 10" pass at most one of them.
SCHEDULES = ((3, 1, 1e-2, 1e-3), (4, 2, 3e-3, 5e-4))
_EVAL = (
    "Keep bn1 in eval mode after model.train() (a forward pre-hook on bn1 setting "
    "m.training = False and returning None), or swap in torchvision's FrozenBatchNorm2d."
)


def _batch(seed: int, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def _run(ex: str, what: str, fn: Callable[..., object], model: nn.Module, *args, task: str):
    """``fn(model, *args)``; a crash becomes a ❌ whose hint reads what the model shows."""
    try:
        return fn(model, *args)
    except (NotImplementedError, AssertionError):
        raise
    except Exception as err:
        hint = f"the error above comes from your function; it should {task}"
        if not any(p.requires_grad for p in model.parameters()):
            hint = f"every parameter of the model is frozen, so the optimiser got none: {task}"
        elif "more than one parameter group" in str(err):
            hint = "a parameter is already in the optimiser: add the body once, when unfrozen."
        raise failure(ex, f"{what} raised {type(err).__name__}: {err}", hint) from err


def _check_frozen(ex: str, model: nn.Module, block: tuple[str, ...], label: str) -> None:
    """Every parameter of the ``block`` modules frozen, and no other."""
    inside = {k: p.requires_grad for k, p in model.named_parameters()}
    prefixes = tuple(f"{b}." for b in block)
    still = [k for k, on in inside.items() if k.startswith(prefixes) and on]
    attr = [b for b in block if vars(model.get_submodule(b)).get("requires_grad") is False]
    culprit = (attr or [k.split(".")[0] for k in still] or block)[0]
    hint = f"call model.{culprit}.requires_grad_(False), the method with the underscore."
    if attr:
        hint = f"model.{culprit}.requires_grad = False sets a plain attribute on the module: {hint}"
    raise_first(ex, (still, f"{still} still require grad", hint))
    beyond = [k for k, on in inside.items() if not k.startswith(prefixes) and not on]
    every = " (every parameter of the model is frozen)" if not any(inside.values()) else ""
    hint = f"freeze {' and '.join(block)} only and leave every other layer trainable."
    raise_first(ex, (beyond, f"you froze more than {label}: {beyond}{every}", hint))


def _step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    x, y = _batch(1)
    model.train()
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


def check_freeze_conv1(fn: Callable[[nn.Module], torch.optim.Optimizer]) -> None:
    """Exercise 6.1: ``fn(model)`` freezes conv1 alone and returns Adam over the rest; one step
    leaves conv1 bit-identical and moves the rest."""
    ex, model = "6.1", small_model()
    before = snapshot(model)
    task = "freeze model.conv1 only and return Adam over the parameters that still train."
    optimizer = _run(ex, "fn(model)", fn, model, task=task)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise failure(ex, f"returned {type(optimizer).__name__}", "return the optimiser.")
    _check_frozen(ex, model, ("conv1",), "conv1")
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    params = dict(model.named_parameters())
    frozen = [k for k, p in params.items() if not p.requires_grad and id(p) in held]
    hint = "give it only the trainable ones: weight decay or momentum move a frozen parameter."
    raise_first(ex, (frozen, f"the optimiser holds frozen parameters {frozen}", hint))
    missing = [k for k, p in params.items() if p.requires_grad and id(p) not in held]
    raise_first(ex, (missing, f"the optimiser misses {missing}", "pass every trainable parameter."))
    try:
        _step(model, optimizer)
    except Exception as err:
        problem = f"one training step with your optimiser raised {type(err).__name__}: {err}"
        hint = "return an optimiser whose step() needs no closure: torch.optim.Adam(..., lr=1e-3)."
        raise failure(ex, problem, hint) from err
    changed = changed_parameters(model, before)
    moved = [k for k in changed if k.startswith("conv1.")]
    raise_first(ex, (moved, f"{moved} changed during a step", "conv1 must be frozen."))
    stuck = [k for k in params if not k.startswith("conv1.") and k not in changed]
    raise_first(ex, (stuck, f"{stuck} did not change during a step", "use Adam(..., lr=1e-3)."))
    passed(
        ex,
        f"conv1 frozen and bit-identical after a step, the other "
        f"{parameter_counts(model)['trainable']:,} parameters trained, "
        "the optimiser holds only trainable parameters",
    )


def check_freeze_bn_block(fn: Callable[[nn.Module], None]) -> None:
    """Exercise 6.2: ``fn(model)`` freezes conv1 and bn1 (weights and statistics, used in train
    mode too) of a BatchNorm model, while bn2 and bn_fc still adapt."""
    ex, model = "6.2", small_model(norm="batch")
    with torch.no_grad():  # non-trivial statistics, as a pretrained bn1 has
        model.bn1.running_mean.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
        model.bn1.running_var.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(3))
    before, eps = snapshot(model), float(model.bn1.eps)
    block = [k for k in before if k.startswith(("conv1.", "bn1.")) and "num_b" not in k]
    _run(ex, "fn(model)", fn, model, task="freeze conv1 and bn1 only, bn1 kept in eval mode.")
    bn1, gone = type(model.bn1).__name__, set(block) - set(model.state_dict())
    hint = "keep bn1 and freeze it, instead of replacing it with nn.Identity."
    raise_first(ex, (gone, f"bn1 is now {bn1}, without statistics", hint))
    rewritten = [k for k in changed_parameters(model, before) if k in block]
    hint = "freezing leaves block 1's values as they are"
    if bn1 != "BatchNorm2d":
        hint = f"{bn1} starts from default values: frozen.load_state_dict(model.bn1.state_dict())"
    raise_first(
        ex, (rewritten, f"fn(model) itself changed block 1's values: {rewritten}", hint + ".")
    )
    _check_frozen(ex, model, ("conv1", "bn1"), "block 1")
    try:
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        for _ in range(2):
            _step(model, optimizer)  # model.train() first, as every training loop does
    except Exception as err:
        hooked = [n or "the model" for n, m in model.named_modules() if m._forward_pre_hooks]
        hint = f"{hooked} has a forward pre-hook: it must return None (m.eval() returns m)."
        problem = f"training your frozen model raised {type(err).__name__}: {err}"
        raise failure(ex, problem, hint if hooked else "freeze with flags and modes only.") from err
    changed = changed_parameters(model, before)
    drift = [k for k in block if k in changed]
    hint = f"frozen weights are not enough: BatchNorm updates its running statistics. {_EVAL}"
    raise_first(ex, (drift, f"block 1 changed during training: {drift}", hint))
    stuck = " and ".join(b for b in ("bn2", "bn_fc") if f"{b}.running_mean" not in changed)
    hint = f"only bn1 stays in eval mode; eval() on the whole model also freezes {stuck}."
    raise_first(ex, (stuck, f"{stuck} did not update running statistics in train mode", hint))
    _check_stored_statistics(ex, model, before, block, eps)
    passed(ex, "conv1 and bn1 (weights and running statistics) unchanged through train-mode steps")


def _check_stored_statistics(ex: str, model: nn.Module, before: dict, block, eps: float) -> None:
    """In train mode, bn1 must normalise with its stored statistics and the pretrained eps."""
    model.train()
    with (
        torch.no_grad(),
        capture_activations(model, ["bn1"], inputs=True) as h,
        capture_activations(model, ["bn1"]) as out,
    ):
        model(_batch(5, 8)[0] + 1.0)
    raise_first(
        ex, (not h["bn1"], "bn1 did not run in the forward pass", "freeze bn1 where it is.")
    )
    h, out, bn1 = h["bn1"][0], out["bn1"][0], model.bn1
    w, b, mean, var = (before[k] for k in block[-4:])  # bn1's weight, bias and statistics
    if torch.allclose(out, F.batch_norm(h, mean, var, w, b, False, 0, eps), atol=1e-4, rtol=1e-4):
        return
    cause = "bn1 is in train mode when it runs. "
    if getattr(bn1, "track_running_stats", True) is False:
        cause = "track_running_stats = False makes every batch use its own statistics. "
    elif getattr(bn1, "momentum", None) == 0:
        cause = "momentum = 0 only stops the statistics from moving; they must also be used. "
    per_batch = torch.allclose(out, F.batch_norm(h, None, None, w, b, True, 0, eps), atol=1e-4)
    problem = "in train mode, bn1 normalises a batch with its own mean and variance"
    raise_first(ex, (per_batch, problem, cause + _EVAL))
    hint = "keep bn1's eps (FrozenBatchNorm2d(n, eps=model.bn1.eps))."
    raise_first(
        ex, (getattr(bn1, "eps", eps) != eps, f"bn1's eps is not the pretrained {eps:g}", hint)
    )
    problem = "in train mode, bn1 does not normalise with its stored statistics"
    raise failure(ex, problem, "freeze bn1 as it is: statistics, weight, bias and eps.")


class _Watch(list):
    """Batches that note ``model``'s parameters and flags at each epoch's start (``starts``) and
    the optimiser's groups, as parameter names and lr, at each step (``steps``)."""

    def __init__(self, batches: list, model: nn.Module) -> None:
        super().__init__(batches)
        self.model, self.starts, self.steps = model, [], []
        self.names = {id(p): n for n, p in model.named_parameters()}

    def __iter__(self):
        named = self.model.named_parameters()
        self.starts.append({k: (p.detach().clone(), p.requires_grad) for k, p in named})
        return super().__iter__()

    def step(self, optimizer: torch.optim.Optimizer, *_: object) -> None:
        groups = optimizer.param_groups
        groups = [({self.names.get(id(p)) for p in g["params"]}, float(g["lr"])) for g in groups]
        self.steps.append((len(self.starts) - 1, groups))


def check_fine_tune(fn: Callable[..., torch.optim.Optimizer]) -> None:
    """Exercise 6.3: ``fn(model, batches, epochs, unfreeze_after, head_lr, body_lr)`` trains the
    head, then also the unfrozen body in its own group; watched at every step and epoch."""
    ex = "6.3"
    shortcuts = [(transfer, n) for n in ("freeze", "unfreeze", "trainable_parameters")]
    for epochs, k, head_lr, body_lr in SCHEDULES:
        case = f"({epochs=}, unfreeze_after={k}, {head_lr=}, {body_lr=})"
        model = small_model(seed=k)
        batches = _Watch([_batch(4), _batch(6)], model)
        body = {n for n in batches.names.values() if n.startswith(BODY)}
        what = f"fn(model, batches, {epochs}, {k}, {head_lr}, {body_lr})"
        task = "freeze the body, train the head at head_lr, then add_param_group the body."
        refused = [*shortcuts, *aliases([fn], shortcuts)]
        with on_every_step(batches.step), refuse(ex, refused, "freezing and unfreezing"):
            optimizer = _run(ex, what, fn, model, batches, epochs, k, head_lr, body_lr, task=task)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise failure(ex, f"returned {type(optimizer).__name__}", "return the optimiser.")
        n = len(batches.starts)
        problem = f"{case} {n} passes over the batches, expected {epochs} (one pass per epoch)"
        raise_first(
            ex, (n != epochs, problem, "for epoch in range(epochs): for x, y in batches: ...")
        )
        _check_phases(ex, case, batches.starts, batches.steps, body, k, head_lr, body_lr)
        final = dict(model.named_parameters())
        stuck = sorted(n for n in body if torch.equal(batches.starts[k][n][0], final[n]))
        hint = "requires_grad_(True) is not enough: optimizer.add_param_group the body."
        raise_first(ex, (stuck, f"{case} after unfreezing, {stuck} did not move", hint))
    passed(
        ex,
        "for 2 schedules: body frozen bit-identical and outside the optimiser for exactly "
        "unfreeze_after epochs, then in its own group at body_lr and moving; head at head_lr",
    )


def _check_phases(ex, case, starts, steps, body, k, head_lr, body_lr) -> None:
    """The frozen and unfrozen phases, from the epoch-start snapshots and the optimiser steps."""
    head = set(starts[0]) - body
    slips = {  # what a wrong learning rate is, when it is a usual slip
        head_lr: "head_lr: the body got the head's rate",
        head_lr / 10: "head_lr / 10, a fixed factor",
        body_lr: "body_lr: head and body rates are swapped",
    }
    for epoch, start in enumerate(starts):
        wrong = sorted(n for n, (_, on) in start.items() if on != (n in head or epoch >= k))
        hint = f"the body alone is frozen (requires_grad_(False)) for the first {k} epoch(s): "
        hint += "unfreeze when epoch == unfreeze_after."
        problem = f"{case} epoch {epoch} started with the wrong requires_grad on {wrong}"
        raise_first(ex, (wrong, problem, hint))
    moved = sorted(n for n in body if not torch.equal(starts[k][n][0], starts[0][n][0]))
    hint = "freeze the body before the first step and keep it out of the optimiser."
    raise_first(ex, (moved, f"{case} {moved} changed during the frozen phase", hint))
    still = all(torch.equal(starts[1][n][0], starts[0][n][0]) for n in head)
    raise_first(ex, (still, f"{case} the head did not train in epoch 0", "train the head."))
    for epoch, groups in steps:
        where, held = f"{case} at a step in epoch {epoch}", set().union(*(n for n, _ in groups))
        hint = "build it over the head only; add_param_group the body when you unfreeze it."
        frozen = sorted(held & body) if epoch < k else []
        raise_first(ex, (frozen, f"{where}, the optimiser held frozen parameters {frozen}", hint))
        missing = sorted((head | (body if epoch >= k else set())) - held)
        hint = "optimizer.add_param_group({'params': body, 'lr': body_lr}) when unfreezing."
        raise_first(ex, (missing, f"{where}, the optimiser misses {missing}", hint))
        for names, lr in groups:
            mixed = names & head and names & body
            raise_first(
                ex, (mixed, f"{where}, a group held head and body", "the body's own group.")
            )
            part, want = ("head", head_lr) if names & head else ("body", body_lr)
            hint = next((f"that is {s}. " for v, s in slips.items() if math.isclose(lr, v)), "")
            problem = f"{where}, the {part}'s group has lr {lr:g}, expected {want:g}"
            hint += "The head trains at head_lr, the body at body_lr."
            raise_first(ex, (names and not math.isclose(lr, want), problem, hint))
