"""Checks of the chapter 2 exercises: BatchNorm's placement in a CNN, its forward computation in
both modes, and an experiment of the learner's own."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import FashionMNISTTensors, TensorLoader, load_tensors
from ..hooks import capture_activations
from ..models import FashionCNN
from ..train import evaluate, fit, seed_everything
from ._common import (
    aliases,
    build_model,
    call,
    ensure,
    failure,
    first_hint,
    passed,
    refuse,
    reported_runs_verdict,
)

__all__ = ["ARMS", "TASK_LR", "VERDICTS"]
__all__ += ["check_batchnorm_fn", "check_batchnorm_placement", "check_lr_experiment"]


# --- 2.1 ---------------------------------------------------------------------------------------

_MEASURE = "measure the flatten size with a dummy torch.zeros(1, 1, input_size, input_size)"
_FORWARD_HINTS = (  # (pattern of the forward pass's error, the mistake behind it)
    ("running_(mean|var)", "num_features must equal the channels of the conv before it."),
    ("expected (4D|2D or 3D) input", "use nn.BatchNorm2d for [N, C, H, W] (BatchNorm1d: [N, F])."),
    ("expected input.*channels", "each conv's in_channels must equal the previous out_channels."),
    ("mat1 and mat2", f"the flatten size does not match the linear layer: {_MEASURE}."),
    ("", "the forward pass must return [4, 10] logits: read the error above."),
)


def _logits(ex: str, model: nn.Module, size: int, hint: str = "") -> None:
    """The model maps a ``[4, 1, size, size]`` batch to ``[4, 10]`` logits."""
    x = torch.randn(4, 1, size, size, generator=torch.Generator().manual_seed(size))
    try:
        out = model(x)
    except NotImplementedError:
        raise
    except Exception as err:
        hint = hint or next(h for p, h in _FORWARD_HINTS if re.search(p, str(err)))
        raise failure(ex, f"a [4, 1, {size}, {size}] batch raised {err!r}", hint) from err
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    ensure(ex, (shape == (4, 10), f"[4, 1, {size}, {size}] gave {shape}", "return [N, 10] logits."))


def check_batchnorm_placement(model_cls: Callable[..., nn.Module]) -> None:
    """Exercise 2.1: every ``Conv2d``'s output goes straight into a ``BatchNorm2d`` of matching
    ``num_features``, and ``model_cls(input_size=36)`` maps 36×36 images to ``[N, 10]``."""
    ex, name = "2.1", getattr(model_cls, "__name__", repr(model_cls))
    model = build_model(ex, model_cls).train()
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    norms = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    ensure(
        ex,
        (len(convs) >= 2, f"the model has {len(convs)} Conv2d layers", "keep both convs."),
        (norms, "the model has no nn.BatchNorm2d layer", "add nn.BatchNorm2d(channels)."),
    )
    with (
        capture_activations(model, convs) as outs,
        capture_activations(model, norms, inputs=True) as ins,
    ):
        _logits(ex, model, 28)
    for i, conv in enumerate(convs, start=1):  # compared by value: conv's output is BN's input
        fed = any(torch.equal(a, b) for n in norms for a in outs[conv] for b in ins[n])
        problem = f"conv #{i}'s output does not go to a BatchNorm2d"
        ensure(ex, (fed, problem, "normalise before the activation: conv → BatchNorm2d → ReLU."))
    unused = [n for n in norms if not ins[n]]
    wrong = [n for n, m in norms.items() if ins[n] and ins[n][0].shape[1] != m.num_features]
    ensure(
        ex,
        (not unused, f"BatchNorm2d {unused} not used", "call each BatchNorm2d in forward."),
        (not wrong, f"{wrong}: num_features is not the channel count", "use out_channels."),
    )
    try:
        with torch.random.fork_rng():
            big = model_cls(input_size=36)
    except NotImplementedError:
        raise
    except Exception as err:
        hint = first_hint(
            (isinstance(err, TypeError), "give __init__ an `input_size: int = 28` argument."),
            (True, f"the model must build for any input size of at least 28: {_MEASURE}."),
        )
        raise failure(ex, f"{name}(input_size=36) raised {err!r}", hint) from err
    ensure(ex, (isinstance(big, nn.Module), f"{name}(36) is not a Module", "subclass nn.Module."))
    _logits(ex, big.eval(), 36, f"{_MEASURE} instead of typing 64 * 7 * 7.")
    biases = sum(c.bias is not None for c in convs.values())
    note = (
        "conv biases dropped (BatchNorm's shift replaces them)"
        if biases == 0
        else f"{biases} conv(s) keep a bias, which BatchNorm makes redundant (bias=False saves it)"
    )
    passed(
        ex,
        f"each of the {len(convs)} convs feeds a BatchNorm2d with matching num_features; it "
        f"also builds for 36×36 inputs; {note}",
    )


# --- 2.2 ---------------------------------------------------------------------------------------

_NORMS = ("batch_norm", "instance_norm", "group_norm", "layer_norm")
_LAYERS = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "InstanceNorm2d", "GroupNorm", "LayerNorm")
_SHORTCUTS = [(F, n) for n in _NORMS] + [(torch, n) for n in _NORMS] + [(nn, n) for n in _LAYERS]
_BLEND = "new = (1 - momentum) * old + momentum * batch value"
_THREE = "return (y, new_running_mean, new_running_var), three tensors, in both modes."


def _bn_cases() -> list[tuple[str, tuple[torch.Tensor, ...], float, float, list[tuple]]]:
    """``(case, (gamma, beta, running_mean, running_var), momentum, eps, [(x, training)...])``."""
    g = torch.Generator().manual_seed(0)
    scale, shift = torch.tensor([1.0, 3.0, 0.5]), torch.tensor([2.0, -1.0, 0.0])
    x = torch.randn(8, 3, 5, 5, generator=g) * scale.view(1, 3, 1, 1) + shift.view(1, 3, 1, 1)
    tiny, g = torch.randn(2, 4, 1, 1, generator=g), torch.Generator().manual_seed(2)
    seq = [(torch.randn(6, 2, 3, 3, generator=g) * 2 + 1, i < 3) for i in range(4)]
    ends = ((0.5, 2), (-1, 1), (-0.5, 0.5), (0.5, 1.5))  # of gamma, beta, running mean and var
    p3, p4 = ([torch.linspace(a, b, c) for a, b in ends] for c in (3, 4))
    p2 = (torch.tensor([1.5, 0.5]), torch.tensor([0.2, -0.3]), torch.zeros(2), torch.ones(2))
    return [
        ("[8, 3, 5, 5], training, channels of different scales", p3, 0.1, 1e-5, [(x, True)]),
        ("[2, 4, 1, 1], training, a tiny batch, momentum 0.3", p4, 0.3, 1e-5, [(tiny, True)]),
        ("[8, 3, 5, 5], eval mode, eps 1e-3", p3, 0.1, 1e-3, [(x, False)]),
        ("3 training batches then 1 eval batch, momentum 0.2", p2, 0.2, 1e-5, seq),
    ]


def _y_hint(x: torch.Tensor, y: torch.Tensor, args: Any, training: bool, eps: float) -> str:
    """The likely mistake behind a wrong output ``y``."""
    gamma, beta, rm, rv = (t.view(1, -1, 1, 1) for t in args)
    mean, var = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), keepdim=True, unbiased=False)

    def near(m: torch.Tensor, v: torch.Tensor, e: float = eps, affine: bool = True) -> bool:
        x_hat = (x - m) / torch.sqrt(v + e)
        return torch.allclose(y, gamma * x_hat + beta if affine else x_hat, atol=1e-4)

    if not training:
        return first_hint(
            (near(mean, var), "in eval mode normalise with running_mean and running_var."),
            (eps != 1e-5 and near(rm, rv, 1e-5), f"use the `eps` argument (here {eps:g})."),
            (True, "eval: y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta."),
        )
    return first_hint(
        (near(mean, x.var((0, 2, 3), keepdim=True)), "normalise with the biased variance."),
        (near(mean, var, affine=False), "apply the learned scale and shift: gamma * x_hat + beta."),
        (True, "the statistics are per channel, over the batch and both spatial dims (0, 2, 3)."),
    )


def _running_hint(x: Tensor, got: Tensor, old: Tensor, m: float, what: str, training: bool) -> str:
    """The likely mistake behind a wrong running statistic."""
    batch = x.mean((0, 2, 3)) if what == "running_mean" else x.var((0, 2, 3))
    biased = (1 - m) * old + m * x.var((0, 2, 3), unbiased=False)

    def near(want: torch.Tensor) -> bool:
        return torch.allclose(got, want, atol=1e-5)

    fixed = m != 0.1 and near(0.9 * old + 0.1 * batch)
    return first_hint(
        (not training, "in eval mode the running statistics stay as they are: return them."),
        (what == "running_var" and near(biased), "use the *unbiased* batch variance (n - 1) here."),
        (near(m * old + (1 - m) * batch), f"{_BLEND}: momentum weighs the batch."),
        (fixed, f"use the `momentum` argument (here {m:g}), not a fixed 0.1: {_BLEND}."),
        (near(old), f"{_BLEND}; you returned it unchanged."),
        (near(batch), f"you returned the batch's value as the new {what}: {_BLEND}."),
        (True, f"{_BLEND}, per channel."),
    )


def _call_bn(ex: str, fn: Callable[..., Any], case: str, *args: Any) -> list[torch.Tensor]:
    """The learner's ``(y, running_mean, running_var)`` with the library switched off."""
    given = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    with refuse(ex, _SHORTCUTS + aliases([fn], _SHORTCUTS), task="BatchNorm's forward pass"):
        hint = "reduce over dims (0, 2, 3) and reshape per-channel vectors to [1, C, 1, 1]."
        result = call(ex, f"batchnorm2d(...) on case {case}", fn, *given, hint=hint)
    names = ("x", "gamma", "beta", "running_mean", "running_var")
    changed = [n for n, a, b in zip(names, given, args, strict=False) if not torch.equal(a, b)]
    problem = f"your function changed its argument(s) {', '.join(changed)} in place on case {case}"
    ensure(ex, (not changed, problem, f"return new tensors ({_BLEND}), not updated ones."))
    try:
        if not isinstance(result, tuple | list) or len(result) != 3:
            raise TypeError(type(result).__name__)
        out = [torch.as_tensor(r) for r in result]
    except Exception as err:  # noqa: BLE001 - e.g. None returned for a running statistic
        raise failure(ex, f"did not return three tensors on case {case}", _THREE) from err
    c, got = args[0].shape[1], [tuple(t.shape) for t in out]
    ok = got == [tuple(args[0].shape), (c,), (c,)] and all(t.is_floating_point() for t in out)
    ensure(ex, (ok, f"returned {got}, {[t.dtype for t in out]} on case {case}", _THREE))
    return [t.float() for t in out]


def check_batchnorm_fn(fn: Callable[..., Any]) -> None:
    """Exercise 2.2: ``batchnorm2d(x, gamma, beta, running_mean, running_var, training,
    momentum, eps) -> (y, new_running_mean, new_running_var)`` equals ``nn.BatchNorm2d``."""
    ex = "2.2"
    for case, args, momentum, eps, steps in _bn_cases():
        layer = nn.BatchNorm2d(len(args[0]), eps=eps, momentum=momentum)
        for tensor, value in zip(layer.state_dict().values(), args, strict=False):
            tensor.copy_(value)  # weight, bias, running_mean, running_var
        for x, training in steps:
            with torch.no_grad():
                want = layer.train(training)(x)
            y, rm, rv = _call_bn(ex, fn, case, x, *args, training, momentum, eps)
            if not torch.allclose(y, want, atol=1e-4):
                hint = _y_hint(x, y, args, training, eps)
                raise failure(ex, f"y differs from nn.BatchNorm2d on case {case}", hint)
            for got, old, what in ((rm, args[2], "running_mean"), (rv, args[3], "running_var")):
                want = getattr(layer, what)
                if not torch.allclose(got, want, atol=1e-4):
                    hint = _running_hint(x, got, old, momentum, what, training)
                    shown = [[round(v, 4) for v in t.tolist()] for t in (got, want)]
                    raise failure(ex, f"new {what} {shown[0]} on case {case}, not {shown[1]}", hint)
            args = (*args[:2], rm, rv)
    passed(
        ex,
        "y, running_mean and running_var match nn.BatchNorm2d on 3 cases (train and "
        "eval mode) and over 3 training batches then eval; the arguments are left unchanged",
    )


# --- 2.3 ---------------------------------------------------------------------------------------

VERDICTS: tuple[str, str, str] = ("BatchNorm helps", "BatchNorm hurts", "within seed noise")
ARMS: tuple[str, str] = ("batch", "none")  # FashionCNN(norm=...) with and without BatchNorm

#: Task 2.3's protocol, pinned here (``HIGH_LR`` in the notebook is the learner's to edit, the
#: task is not): Adam at 10× chapter 2's 1e-3, one epoch in shuffled batches of 64.
TASK_LR, TASK_BATCH, TASK_EPOCHS = 10 * 1e-3, 64, 1
_PROTOCOL = (
    "the task's protocol (seed_everything(seed), FashionCNN(norm=norm), one epoch of Adam at "
    "lr 0.01 on exp_train in batches of 64 shuffled with seed, then the accuracy on val_loader)"
)


def _task_data() -> tuple[FashionMNISTTensors, FashionMNISTTensors]:
    """Task 2.3's ``exp_train`` and ``val_small``, as the exercises' setup cell builds them."""
    splits, pick = load_tensors(), torch.Generator().manual_seed(0)
    train, val = splits["train"], splits["val"]
    train_small = train.subset(torch.randperm(len(train), generator=pick)[:2000])
    val_small = val.subset(torch.randperm(len(val), generator=pick)[:1000])
    return train_small.random_subset(1000, seed=0), val_small


def _protocol_accuracy(norm: str, seed: int, train: Any, val: Any, device: torch.device) -> float:
    """One run of Task 2.3 by the check's own protocol: its validation accuracy."""
    with torch.random.fork_rng(devices=[]):
        seed_everything(seed)
        model = FashionCNN(norm=norm).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=TASK_LR)
        batches = TensorLoader(train, TASK_BATCH, shuffle=True, seed=seed, device=device)
        fit(model, batches, None, TASK_EPOCHS, optimizer, progress=False)
        return evaluate(model, TensorLoader(val, 500, device=device))[1]


def _watch(ex: str, run: Callable, arm: str, seed: int, reported: Any, n: int, found: dict) -> None:
    """Rerun ``run(arm, seed)``, watching its optimiser steps and layers: the task's protocol
    on ``n`` training images, and the reported number back. Its device goes into ``found``."""
    from torch.nn.modules.module import register_module_forward_pre_hook
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    steps: list[tuple[str, list[float]]] = []
    layers: set[str] = set()

    def enter(module: nn.Module, args: tuple[Any, ...]) -> None:
        layers.add(type(module).__name__)
        if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
            found["device"] = args[0].device

    def step(opt: torch.optim.Optimizer, *_: Any) -> None:
        steps.append((type(opt).__name__, [float(g["lr"]) for g in opt.param_groups]))

    hooks = [register_optimizer_step_pre_hook(step), register_module_forward_pre_hook(enter)]
    who = f"run({arm!r}, {seed})"
    try:
        hint = "run(norm, seed) trains FashionCNN(norm=norm), returns its validation accuracy."
        value = call(ex, who, run, arm, seed, hint=hint)
    finally:
        for hook in hooks:
            hook.remove()
    lrs, optimizers = sorted({v for _, lrs in steps for v in lrs}), sorted({o for o, _ in steps})
    want = -(-n // TASK_BATCH) * TASK_EPOCHS
    epoch = f"one epoch on exp_train ({n:,} images in batches of {TASK_BATCH}, {want} steps)"
    base = "1e-3 is chapter 2's rate; " if any(math.isclose(v, TASK_LR / 10) for v in lrs) else ""
    lr_ok, bn = all(math.isclose(v, TASK_LR) for v in lrs), "BatchNorm2d" in layers
    value = value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value
    number = isinstance(value, int | float) and not isinstance(value, bool)
    ensure(
        ex,
        (steps, f"{who} took no optimiser step", f"train the model: {epoch}."),
        (lr_ok, f"{who} trained at lr {lrs[:3]}", f"{base}use the 10× larger learning rate."),
        (optimizers == ["Adam"], f"{who} trained with {optimizers}, not Adam", "keep Adam."),
        (len(steps) == want, f"{who} took {len(steps)} optimiser step(s)", f"train {epoch}."),
        (bn == (arm == "batch"), f"{who}: BatchNorm2d {bn}", "'batch' has BatchNorm, 'none' not."),
        (number, f"{who} returned {type(value).__name__}", "return the accuracy as a float."),
    )
    said = float(reported[arm][seed])
    if abs(value - said) > 1e-6:
        other = [(a, s) for a, r in reported.items() for s, v in r.items() if abs(v - value) < 1e-6]
        hint = first_hint(
            (other, "store each accuracy under the arm and seed of its own run."),
            (True, "report the numbers of your runs, as run returns them, from seeded runs."),
        )
        mixed = f", the number you reported for {other[0]}" if other else ""
        raise failure(ex, f"{who}: reported {said:.4f}, now returns {value:.4f}{mixed}", hint)


def check_lr_experiment(run: Callable, reported: Any, verdict: Any, lr: float) -> None:
    """Exercise 2.3: does BatchNorm still help at a 10× larger learning rate? ``run`` is watched
    at one seed for both arms, then every reported run is recomputed by :data:`_PROTOCOL`."""
    ex = "2.3"
    ok = isinstance(lr, int | float) and not isinstance(lr, bool) and math.isclose(lr, TASK_LR)
    ensure(ex, (ok, f"lr={lr!r}, not {TASK_LR:g}", "set HIGH_LR = 10 * 1e-3, the task's rate."))
    train, val = _task_data()
    found: dict[str, torch.device] = {}

    def watch(_arm: str, seed: int) -> None:  # both arms: BatchNorm in one and not the other
        for arm in ARMS:
            _watch(ex, run, arm, seed, reported, len(train), found)

    def recompute(arm: str, seed: int) -> float:
        return _protocol_accuracy(arm, seed, train, val, found.get("device", torch.device("cpu")))

    reported_runs_verdict(
        ex,
        reported,
        verdict,
        arms=ARMS,
        verdicts=VERDICTS,
        recompute=recompute,
        tolerance=0.01,
        what="validation accuracy",
        value_range=(0.0, 1.0),
        range_hint="an accuracy is a fraction in [0, 1], as evaluate returns it, not a percentage.",
        rerun="all",
        verify_run=watch,
        protocol=_PROTOCOL,
    )
    passed(
        ex,
        "a rerun of one reported run gives the same accuracy at the 10× learning rate, and "
        "the verdict follows the chapter's noise rule",
    )
