"""Checks of the chapter 2 exercises: BatchNorm's placement in a CNN, its forward computation in
both modes, and an experiment of the learner's own."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..data import FashionMNISTTensors, TensorLoader, load_tensors
from ..models import FashionCNN
from ..train import evaluate, fit, seed_everything
from ._common import aliases, build_model, call, failure, passed, refuse, reported_runs_verdict

__all__ = [
    "ARMS",
    "TASK_LR",
    "VERDICTS",
    "check_batchnorm_fn",
    "check_batchnorm_placement",
    "check_lr_experiment",
]


# --- 2.1 ---------------------------------------------------------------------------------------


def check_batchnorm_placement(model_cls: Callable[..., nn.Module]) -> None:
    """Exercise 2.1: a CNN with a ``BatchNorm2d`` after every ``Conv2d``, for any input size.

    ``model_cls()`` is traced on a batch ``[4, 1, 28, 28]`` with forward hooks: the output of every
    convolution must be the very tensor that a ``BatchNorm2d`` receives next, with
    ``num_features`` equal to the conv's ``out_channels``; every ``BatchNorm2d`` must be used; the
    logits must have shape ``[4, 10]``. ``model_cls(input_size=36)`` must map a ``[4, 1, 36,
    36]`` batch to ``[4, 10]`` too (a flatten size typed as ``64 * 7 * 7`` fails there).

    Raises:
        AssertionError: with a hint (e.g. BatchNorm after the ReLU, wrong ``num_features``).
    """
    ex = "2.1"
    model = build_model(ex, model_cls)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if len(convs) < 2:
        raise failure(ex, f"the model has {len(convs)} Conv2d layers", "keep both conv layers.")
    if not norms:
        raise failure(
            ex,
            "the model has no nn.BatchNorm2d layer",
            "add nn.BatchNorm2d(out_channels) after each conv (BatchNorm1d is for [N, F] inputs).",
        )
    outputs: dict[int, nn.Module] = {}  # id(tensor) -> the module that produced it
    consumers: dict[int, list[nn.Module]] = {}  # id(module) -> modules fed by its output
    keep: list[torch.Tensor] = []  # keep tensors alive so that their ids stay unique

    fired: set[int] = set()

    def record(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        fired.add(id(module))
        if args and isinstance(args[0], torch.Tensor) and id(args[0]) in outputs:
            consumers.setdefault(id(outputs[id(args[0])]), []).append(module)
        if isinstance(out, torch.Tensor):
            outputs[id(out)] = module
            keep.append(out)

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(record) for m in leaves]
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    try:
        model.train()
        out = model(x)
    except NotImplementedError:
        raise
    except Exception as err:
        raise failure(
            ex, f"the forward pass raised {type(err).__name__}: {err}", _forward_error_hint(err)
        ) from err
    finally:
        for hook in hooks:
            hook.remove()
    for i, conv in enumerate(convs, start=1):
        if id(conv) not in fired:
            raise failure(ex, f"conv #{i} is never used in forward", "use every conv in forward.")
        fed = consumers.get(id(conv), [])
        nxt = next((m for m in fed if isinstance(m, nn.BatchNorm2d)), None)
        if nxt is None:
            what = type(fed[0]).__name__ if fed else "a function such as F.relu"
            raise failure(
                ex,
                f"conv #{i}'s output does not go to a BatchNorm2d (it goes to {what})",
                "normalise the conv's output before the activation: conv → BatchNorm2d → ReLU.",
            )
        if nxt.num_features != conv.out_channels:
            raise failure(
                ex,
                f"conv #{i} has {conv.out_channels} output channels but its BatchNorm2d has "
                f"num_features={nxt.num_features}",
                "num_features is the number of channels the BatchNorm normalises.",
            )
    used = {id(m) for fed in consumers.values() for m in fed}
    if any(id(n) not in used for n in norms):
        raise failure(
            ex, "a BatchNorm2d layer is defined but not used", "call each BatchNorm2d in forward."
        )
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (4, 10):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise failure(ex, f"a [4, 1, 28, 28] batch gave {shape}", "return [N, 10] logits.")
    _check_builds_at_36(ex, model_cls)
    biases = sum(c.bias is not None for c in convs)
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


def _forward_error_hint(err: Exception) -> str:
    """The mistake behind an error of the forward pass on a ``[4, 1, 28, 28]`` batch."""
    message = str(err)
    if "running_mean" in message or "running_var" in message:
        return (
            "num_features must equal the channels coming out of the conv before it "
            "(conv2 has 64 output channels)."
        )
    if "expected 4D input" in message or "expected 2D or 3D input" in message:
        return "use nn.BatchNorm2d for [N, C, H, W] feature maps (BatchNorm1d is for [N, F])."
    if "channels" in message and "expected input" in message:
        return (
            "a conv receives another number of channels than its in_channels: each conv's "
            "in_channels must equal the out_channels of the conv before it."
        )
    if "mat1 and mat2" in message:
        return (
            "the flatten size does not match the linear layer's in_features: measure it with "
            "a dummy torch.zeros(1, 1, input_size, input_size) passed through the conv blocks."
        )
    return (
        "the forward pass of a [4, 1, 28, 28] batch in training mode must return [4, 10] "
        "logits: read the error above for the layer that failed."
    )


def _check_builds_at_36(ex: str, model_cls: Callable[..., nn.Module]) -> None:
    """``model_cls(input_size=36)`` maps a ``[4, 1, 36, 36]`` batch to ``[4, 10]`` logits."""
    name = getattr(model_cls, "__name__", repr(model_cls))
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = model_cls(input_size=36)
    except NotImplementedError:
        raise
    except TypeError as err:
        raise failure(
            ex,
            f"{name}(input_size=36) raised TypeError: {err}",
            "give __init__ an `input_size: int = 28` argument and use it for the dummy image.",
        ) from err
    except Exception as err:
        raise failure(
            ex,
            f"{name}(input_size=36) raised {type(err).__name__}: {err}",
            "the model must build for any input size of at least 28: compute the flatten size "
            "from a dummy torch.zeros(1, 1, input_size, input_size) passed through the convs.",
        ) from err
    if not isinstance(model, nn.Module):
        raise failure(ex, f"{name}(input_size=36) is not an nn.Module", "subclass nn.Module.")
    x = torch.randn(4, 1, 36, 36, generator=torch.Generator().manual_seed(36))
    out = call(
        ex,
        f"{name}(input_size=36) on a [4, 1, 36, 36] batch",
        model.eval(),
        x,
        hint="the flatten size must follow the input size: measure it with a dummy "
        "torch.zeros(1, 1, input_size, input_size) passed through the conv blocks, instead of "
        "typing 64 * 7 * 7.",
    )
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (4, 10):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise failure(
            ex, f"a [4, 1, 36, 36] batch gave {shape}, not (4, 10)", "return [N, 10] logits."
        )


# --- 2.2 ---------------------------------------------------------------------------------------


def _norm_shortcuts() -> list[tuple[object, str]]:
    """Every library normalisation a learner could compute BatchNorm with, where it exists."""
    from torch.nn.modules import batchnorm, instancenorm, normalization

    functions = ("batch_norm", "instance_norm", "group_norm", "layer_norm")
    torch_ops = (
        *functions,
        "native_batch_norm",
        "_native_batch_norm_legit",
        "_native_batch_norm_legit_no_training",
        "_batch_norm_impl_index",
        "batch_norm_stats",
        "batch_norm_elemt",
        "batch_norm_update_stats",
        "native_group_norm",
        "native_layer_norm",
    )
    classes = (
        "BatchNorm1d",
        "BatchNorm2d",
        "BatchNorm3d",
        "LazyBatchNorm2d",
        "SyncBatchNorm",
        "InstanceNorm1d",
        "InstanceNorm2d",
        "InstanceNorm3d",
        "GroupNorm",
        "LayerNorm",
    )
    pairs = [(torch.nn.functional, n) for n in functions] + [(torch, n) for n in torch_ops]
    for owner in (torch.nn, batchnorm, instancenorm, normalization):
        pairs += [(owner, n) for n in classes]
    return [(owner, n) for owner, n in pairs if hasattr(owner, n)]


def _bn_cases() -> list[tuple[str, torch.Tensor, bool, float, float]]:
    """``(name, x, training, momentum, eps)``; the running statistics differ from the batch's."""
    g = torch.Generator().manual_seed(0)
    shifted = torch.randn(8, 3, 5, 5, generator=g) * torch.tensor([1.0, 3.0, 0.5]).view(
        1, 3, 1, 1
    ) + torch.tensor([2.0, -1.0, 0.0]).view(1, 3, 1, 1)
    return [
        (
            "[8, 3, 5, 5] in training mode, channels of different means and scales",
            shifted,
            True,
            0.1,
            1e-5,
        ),
        (
            "[2, 4, 1, 1] in training mode, a tiny batch, momentum 0.3",
            torch.randn(2, 4, 1, 1, generator=g),
            True,
            0.3,
            1e-5,
        ),
        ("[8, 3, 5, 5] in eval mode, eps 1e-3", shifted, False, 0.1, 1e-3),
    ]


def _reference_bn(
    x: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    training: bool,
    momentum: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What ``nn.BatchNorm2d`` computes, from a layer loaded with these parameters."""
    layer = nn.BatchNorm2d(x.shape[1], eps=eps, momentum=momentum)
    with torch.no_grad():
        layer.weight.copy_(gamma)
        layer.bias.copy_(beta)
        layer.running_mean.copy_(running_mean)
        layer.running_var.copy_(running_var)
        y = layer.train(training)(x)
    return y, layer.running_mean.clone(), layer.running_var.clone()


def _bn_hint(
    x: torch.Tensor,
    y: torch.Tensor,
    args: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    training: bool,
    momentum: float,
    eps: float,
) -> str:
    """The likely mistake behind a wrong output ``y``."""
    gamma, beta, rm, rv = args
    shape = (1, -1, 1, 1)
    mean = x.mean(dim=(0, 2, 3)).view(shape)
    biased = x.var(dim=(0, 2, 3), unbiased=False).view(shape)
    unbiased = x.var(dim=(0, 2, 3)).view(shape)
    if not training:
        batch_y = (x - mean) / torch.sqrt(biased + eps) * gamma.view(shape) + beta.view(shape)
        if torch.allclose(y, batch_y, atol=1e-4):
            return (
                "in eval mode normalise with running_mean and running_var, not with the "
                "batch's statistics: a prediction must not depend on the rest of the batch."
            )
        fixed = (x - rm.view(shape)) / torch.sqrt(rv.view(shape) + 1e-5)
        fixed = fixed * gamma.view(shape) + beta.view(shape)
        if eps != 1e-5 and torch.allclose(y, fixed, atol=1e-5):
            return f"use the `eps` argument (here {eps:g}), not a fixed 1e-5."
        return "eval mode: y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta."
    plain = (x - mean) / torch.sqrt(biased + eps)
    if torch.allclose(
        y, (x - mean) / torch.sqrt(unbiased + eps) * gamma.view(shape) + beta.view(shape), atol=1e-4
    ):
        return "normalise with the biased variance (unbiased=False), as BatchNorm does."
    if torch.allclose(y, plain, atol=1e-4):
        return "apply the learned scale and shift: gamma * x_hat + beta, per channel."
    return (
        "the statistics are per channel, over the batch and both spatial dims: "
        "x.mean(dim=(0, 2, 3)); not per image or per pixel."
    )


def _running_hint(
    x: torch.Tensor, got: torch.Tensor, old: torch.Tensor, what: str, momentum: float
) -> str:
    """The likely mistake behind a wrong running statistic."""
    dims = (0, 2, 3)
    if what == "running_mean":
        batch = x.mean(dim=dims)
    else:
        batch = x.var(dim=dims)
        biased = x.var(dim=dims, unbiased=False)
        if torch.allclose(got, (1 - momentum) * old + momentum * biased, atol=1e-5):
            return (
                "the running variance uses the *unbiased* batch variance (divide by n - 1), "
                "even though y is normalised with the biased one."
            )
    if torch.allclose(got, momentum * old + (1 - momentum) * batch, atol=1e-5):
        return "new = (1 - momentum) * old + momentum * batch value: momentum weighs the batch."
    if not math.isclose(momentum, 0.1) and torch.allclose(got, 0.9 * old + 0.1 * batch, atol=1e-5):
        return (
            f"use the `momentum` argument (here {momentum:g}), not a fixed 0.1: new = "
            "(1 - momentum) * old + momentum * batch value."
        )
    if torch.allclose(got, old, atol=1e-6):
        return (
            f"in training mode {what} moves towards the batch's value: new = (1 - momentum) * "
            "old + momentum * batch value; you returned it unchanged."
        )
    if torch.allclose(got, batch, atol=1e-5):
        return (
            f"you returned the batch's value as the new {what}: blend it with the old one, "
            "new = (1 - momentum) * old + momentum * batch value."
        )
    return f"new {what} = (1 - momentum) * old + momentum * the batch's value, per channel."


def check_batchnorm_fn(fn: Callable[..., Any]) -> None:
    """Exercise 2.2: ``batchnorm2d(x, gamma, beta, running_mean, running_var, training,
    momentum, eps) -> (y, new_running_mean, new_running_var)``.

    Compared with ``nn.BatchNorm2d`` (computed by the check before the library's normalisations
    are switched off): in training mode per-channel statistics over ``(N, H, W)``, the biased
    variance to normalise, the unbiased one in ``new = (1 - momentum) * old + momentum *
    batch``; in eval mode the running statistics normalise and stay as they are. Also over
    three training batches and an eval batch in a row, threading the running statistics. The
    caller's tensors must not change.

    Raises:
        AssertionError: with the failing case and a hint.
    """
    ex = "2.2"
    shortcuts = _norm_shortcuts()
    shortcuts += aliases([fn], shortcuts)
    cases = _bn_cases()
    for case, x, training, momentum, eps in cases:
        c = x.shape[1]
        args = (
            torch.linspace(0.5, 2.0, c),
            torch.linspace(-1.0, 1.0, c),
            torch.linspace(-0.5, 0.5, c),
            torch.linspace(0.5, 1.5, c),
        )
        expected = _reference_bn(x, *args, training, momentum, eps)
        result = _call_bn(ex, fn, shortcuts, case, x, args, training, momentum, eps)
        y, new_rm, new_rv = result
        if not torch.allclose(y, expected[0], atol=1e-4):
            hint = _bn_hint(x, y, args, training, momentum, eps)
            raise failure(ex, f"y differs from nn.BatchNorm2d on case {case}", hint)
        for got, want, old, what in (
            (new_rm, expected[1], args[2], "running_mean"),
            (new_rv, expected[2], args[3], "running_var"),
        ):
            if torch.allclose(got, want, atol=1e-4):
                continue
            if not training:
                hint = "in eval mode the running statistics stay as they are: return them."
            else:
                hint = _running_hint(x, got, old, what, momentum)
            shown = [round(v, 4) for v in got.tolist()]
            raise failure(
                ex,
                f"new {what} {shown} on case {case}, expected "
                f"{[round(v, 4) for v in want.tolist()]}",
                hint,
            )
    _check_sequence(ex, fn, shortcuts)
    passed(
        ex,
        f"y, running_mean and running_var match nn.BatchNorm2d on {len(cases)} cases (train and "
        "eval mode) and over 3 training batches then eval; the arguments are left unchanged",
    )


def _call_bn(
    ex: str,
    fn: Callable[..., Any],
    shortcuts: list[tuple[object, str]],
    case: str,
    x: torch.Tensor,
    args: tuple[torch.Tensor, ...],
    training: bool,
    momentum: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Call the learner's function with the library switched off; check shapes and in-place."""
    given = [t.clone() for t in (x, *args)]
    with refuse(ex, shortcuts, task="BatchNorm's forward pass"):
        result = call(
            ex,
            f"batchnorm2d(..., training={training}) on case {case}",
            fn,
            *given,
            training,
            momentum,
            eps,
            hint="reduce over dims (0, 2, 3) and reshape per-channel vectors to [1, C, 1, 1].",
        )
    names = ("x", "gamma", "beta", "running_mean", "running_var")
    changed = [n for n, a, b in zip(names, given, (x, *args), strict=True) if not torch.equal(a, b)]
    if changed:
        raise failure(
            ex,
            f"your function changed its argument(s) {', '.join(changed)} in place on case {case}",
            "return new tensors (new = (1 - momentum) * old + momentum * batch) instead of "
            "updating the caller's tensors with mul_/add_/copy_ or `old[...] =`.",
        )
    if not isinstance(result, tuple | list) or len(result) != 3:
        raise failure(
            ex, "did not return three tensors", "return (y, new_running_mean, new_running_var)."
        )
    try:
        y, new_rm, new_rv = (torch.as_tensor(r) for r in result)
    except Exception as err:  # noqa: BLE001 - e.g. None returned for a running statistic
        raise failure(
            ex,
            f"returned {[type(r).__name__ for r in result]} on case {case}, not three tensors",
            "return (y, new_running_mean, new_running_var), three tensors, in both modes.",
        ) from err
    if not all(t.is_floating_point() for t in (y, new_rm, new_rv)):
        raise failure(
            ex,
            f"returned tensors of dtypes {[str(t.dtype) for t in (y, new_rm, new_rv)]} on case "
            f"{case}",
            "return floating-point tensors (float32, as x).",
        )
    y, new_rm, new_rv = (t.float() for t in (y, new_rm, new_rv))
    c = x.shape[1]
    if tuple(y.shape) != tuple(x.shape) or tuple(new_rm.shape) != (c,) or new_rv.shape != (c,):
        raise failure(
            ex,
            f"shapes: y {tuple(y.shape)}, running_mean {tuple(new_rm.shape)}, running_var "
            f"{tuple(new_rv.shape)} on case {case}",
            f"y has x's shape {tuple(x.shape)}; the running statistics have one value per "
            f"channel ({c},).",
        )
    return y, new_rm, new_rv


def _check_sequence(ex: str, fn: Callable[..., Any], shortcuts: list[tuple[object, str]]) -> None:
    """Three training batches then one eval batch, the running statistics threaded through,
    against one ``nn.BatchNorm2d`` layer that sees the same batches."""
    g = torch.Generator().manual_seed(2)
    batches = [torch.randn(6, 2, 3, 3, generator=g) * 2 + 1 for _ in range(4)]
    layer = nn.BatchNorm2d(2, momentum=0.2)
    gamma, beta = torch.tensor([1.5, 0.5]), torch.tensor([0.2, -0.3])
    with torch.no_grad():
        layer.weight.copy_(gamma)
        layer.bias.copy_(beta)
        expected = [layer.train(i < 3)(x).clone() for i, x in enumerate(batches)]
    rm, rv = torch.zeros(2), torch.ones(2)
    case = "3 training batches then 1 eval batch, momentum 0.2, running stats threaded"
    for i, x in enumerate(batches):
        y, rm, rv = _call_bn(ex, fn, shortcuts, case, x, (gamma, beta, rm, rv), i < 3, 0.2, 1e-5)
        if not torch.allclose(y, expected[i], atol=1e-4):
            raise failure(
                ex,
                f"y of batch {i + 1} differs from nn.BatchNorm2d on case {case}",
                "return the updated running statistics as new tensors, start eval mode from "
                "them, and use the `momentum` argument rather than a fixed 0.1.",
            )
    if not (
        torch.allclose(rm, layer.running_mean, atol=1e-4)
        and torch.allclose(rv, layer.running_var, atol=1e-4)
    ):
        raise failure(
            ex,
            f"the running statistics after {case} differ from nn.BatchNorm2d's",
            "eval mode must return the running statistics unchanged.",
        )


# --- 2.3 ---------------------------------------------------------------------------------------

VERDICTS: tuple[str, str, str] = ("BatchNorm helps", "BatchNorm hurts", "within seed noise")
ARMS: tuple[str, str] = ("batch", "none")  # FashionCNN(norm=...) with and without BatchNorm

#: Task 2.3's protocol, pinned here: ``HIGH_LR`` in the notebook is the learner's to edit, the
#: task is not. Adam at 10× chapter 2's 1e-3, one epoch in shuffled batches of 64.
TASK_LR = 10 * 1e-3
TASK_BATCH = 64
TASK_EPOCHS = 1
_PROTOCOL = (
    "the task's protocol (seed_everything(seed), FashionCNN(norm=norm), one epoch of Adam at "
    "lr 0.01 on exp_train in batches of 64 shuffled with seed, then the accuracy on val_loader)"
)


def _task_data() -> tuple[FashionMNISTTensors, FashionMNISTTensors]:
    """Task 2.3's ``exp_train`` (1,000 images) and ``val_small`` (1,000), built as the setup
    cell of the chapter 2 exercises builds them."""
    splits = load_tensors()
    pick = torch.Generator().manual_seed(0)
    train, val = splits["train"], splits["val"]
    train_small = train.subset(torch.randperm(len(train), generator=pick)[:2000])
    val_small = val.subset(torch.randperm(len(val), generator=pick)[:1000])
    return train_small.random_subset(1000, seed=0), val_small


def _protocol_accuracy(
    norm: str,
    seed: int,
    train: FashionMNISTTensors,
    val: FashionMNISTTensors,
    device: torch.device,
) -> float:
    """One run of Task 2.3 by the check's own protocol: its validation accuracy."""
    with torch.random.fork_rng(devices=[]):
        seed_everything(seed)
        model = FashionCNN(norm=norm).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=TASK_LR)
        batches = TensorLoader(train, TASK_BATCH, shuffle=True, seed=seed, device=device)
        fit(model, batches, None, TASK_EPOCHS, optimizer, progress=False)
        return evaluate(model, TensorLoader(val, 500, device=device))[1]


class _RunRecord:
    """What one call of the learner's ``run`` did: optimiser steps, layers, images, device."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.optimizers: set[str] = set()
        self.steps = 0
        self.layer_types: set[str] = set()
        self.train_images = 0
        self.device: torch.device | None = None
        self.depth = 0

    def step(self, optimizer: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
        self.steps += 1
        self.optimizers.add(type(optimizer).__name__)
        self.lrs.extend(float(group["lr"]) for group in optimizer.param_groups)

    def enter(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.depth == 0 and module.training and torch.is_grad_enabled():
            x = args[0] if args else None
            if isinstance(x, torch.Tensor) and x.dim() == 4:
                self.train_images += len(x)
                self.device = x.device
        self.depth += 1

    def leave(self, module: nn.Module, _args: Any, _out: Any) -> None:
        self.depth = max(self.depth - 1, 0)
        self.layer_types.add(type(module).__name__)


def _verify_run(
    ex: str,
    run: Callable[[str, int], float],
    reported: Any,
    train_size: int,
    found: dict[str, torch.device],
) -> Callable[[str, int], None]:
    """Rerun the learner's ``run(arm, seed)`` for both arms at the seed it is given, watching
    it: Adam at :data:`TASK_LR`, one epoch of the task's batches, BatchNorm2d layers exactly in
    the ``"batch"`` arm, and the reported number back again. Stores the device it trained on in
    ``found``."""
    from torch.nn.modules.module import (
        register_module_forward_hook,
        register_module_forward_pre_hook,
    )
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    def verify(_arm: str, seed: int) -> None:
        for arm in ARMS:  # both arms: BatchNorm must run in one and not in the other
            verify_one(arm, seed)

    def verify_one(arm: str, seed: int) -> None:
        record = _RunRecord()
        handles = [
            register_optimizer_step_pre_hook(record.step),
            register_module_forward_pre_hook(record.enter),
            register_module_forward_hook(record.leave),
        ]
        try:
            value = call(
                ex,
                f"run({arm!r}, {seed})",
                run,
                arm,
                seed,
                hint="run(norm, seed) trains FashionCNN(norm=norm) from seed_everything(seed) "
                "and returns its validation accuracy as a float.",
            )
        finally:
            for handle in handles:
                handle.remove()
        found["device"] = record.device or torch.device("cpu")
        who = f"run({arm!r}, {seed})"
        steps = -(-train_size // TASK_BATCH) * TASK_EPOCHS
        if record.steps == 0:
            raise failure(
                ex,
                f"{who} took no optimiser step",
                "train the model: one epoch of Adam on exp_train, optimizer.step() per batch "
                "(fit(...) does it).",
            )
        if not all(math.isclose(v, TASK_LR) for v in record.lrs):
            shown = ", ".join(f"{v:g}" for v in sorted(set(record.lrs))[:3])
            base = any(math.isclose(v, TASK_LR / 10) for v in record.lrs)
            raise failure(
                ex,
                f"{who} trained with learning rate {shown}, not {TASK_LR:g}",
                ("1e-3 is chapter 2's rate; " if base else "")
                + f"the question is about the 10× larger learning rate, 10 × 1e-3 = {TASK_LR:g} "
                "(HIGH_LR): give it to the optimiser.",
            )
        if record.optimizers != {"Adam"}:
            raise failure(
                ex,
                f"{who} trained with {', '.join(sorted(record.optimizers))}, not Adam",
                "the task changes one thing, the learning rate: keep chapter 2's optimiser, "
                "torch.optim.Adam(model.parameters(), lr=HIGH_LR).",
            )
        if record.steps != steps:
            raise failure(
                ex,
                f"{who} took {record.steps} optimiser step(s); one epoch on exp_train "
                f"({train_size:,} images in batches of {TASK_BATCH}) is {steps}",
                "train for one epoch on exp_train: TensorLoader(exp_train, 64, shuffle=True, "
                "seed=seed), one optimiser step per batch, as fit(..., epochs=1) does.",
            )
        if record.train_images != train_size * TASK_EPOCHS:
            raise failure(
                ex,
                f"{who} trained on {record.train_images:,} images in {steps} steps; one epoch on "
                f"exp_train is {train_size:,}",
                "train on exp_train (the 1,000 images of the task), in batches of 64.",
            )
        has_bn = "BatchNorm2d" in record.layer_types
        if has_bn != (arm == ARMS[0]):
            raise failure(
                ex,
                f"{who} {'used' if has_bn else 'used no'} BatchNorm2d layers",
                "build FashionCNN(norm=norm): 'batch' has BatchNorm, 'none' has none.",
            )
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise failure(
                ex,
                f"{who} returned {type(value).__name__}, not a float",
                "return the validation accuracy as a float: evaluate(model, val_loader)[1].",
            )
        said = float(reported[arm][seed])
        if not abs(float(value) - said) <= 1e-6:
            elsewhere = [
                (a, s)
                for a, runs in reported.items()
                for s, v in runs.items()
                if (a, s) != (arm, seed) and abs(float(v) - float(value)) <= 1e-6
            ]
            hint = (
                f"{who} returns the number you reported under {elsewhere[0]}: store each "
                "accuracy under the arm and seed of its own run, reported[norm][seed] = "
                "run(norm, seed)."
                if elsewhere
                else "report the numbers of your runs, as run returns them; and make run "
                "reproducible: seed_everything(seed) first, batches shuffled with seed."
            )
            raise failure(
                ex,
                f"{who}: reported {said:.4f}, the same call now returns {float(value):.4f}",
                hint,
            )

    return verify


def _explain_lr_runs(
    reported: Mapping[tuple[str, int], float], again: Mapping[tuple[str, int], float]
) -> str | None:
    """Swapped arms or seeds: every reported number is another run's."""
    tol = 0.01
    if all((a, s) in again for a, s in reported):
        other = {ARMS[0]: ARMS[1], ARMS[1]: ARMS[0]}
        if all(abs(v - again[other[a], s]) <= tol for (a, s), v in reported.items()):
            return "the arms are swapped: the numbers under 'batch' are the runs without BatchNorm."
        seeds = sorted({s for _, s in reported})
        if len(seeds) == 2:
            flip = {seeds[0]: seeds[1], seeds[1]: seeds[0]}
            if all(abs(v - again[a, flip[s]]) <= tol for (a, s), v in reported.items()):
                return "the seeds are swapped: report each accuracy under the seed of its run."
    return None


def check_lr_experiment(
    run: Callable[[str, int], float], reported: Any, verdict: Any, lr: float
) -> None:
    """Exercise 2.3: does BatchNorm still help at a 10× larger learning rate?

    ``reported`` is ``{"batch": {seed: val_acc}, "none": {seed: val_acc}}`` with the same two
    or more seeds per arm; ``verdict`` one of :data:`VERDICTS`, which must be the one that the
    chapter's noise rule gives for these numbers
    (:attr:`course_utils.experiments.Comparison.beyond_noise`). ``lr`` (the notebook's
    ``HIGH_LR``) must be the task's :data:`TASK_LR`. The learner's ``run(arm, seed)`` is rerun
    for both arms at a seed chosen at random by the check, and must train with Adam at
    :data:`TASK_LR` for one epoch of the task's batches, with BatchNorm2d layers exactly in the
    ``"batch"`` arm, and return the reported number again. Then every reported run is
    recomputed by the check's own protocol (:func:`_protocol_accuracy`, on the task's data,
    on the device ``run`` trained on) and must agree within 0.01.

    Raises:
        AssertionError: with the failing case and a hint.
    """
    ex = "2.3"
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isclose(lr, TASK_LR):
        raise failure(
            ex,
            f"lr={lr!r}, but the task's learning rate is 10 × 1e-3 = {TASK_LR:g}",
            "set HIGH_LR = 10 * 1e-3 (10× chapter 2's Adam learning rate) and pass it as lr.",
        )
    train, val = _task_data()
    found: dict[str, torch.device] = {}
    reported_runs_verdict(
        ex,
        reported,
        verdict,
        arms=ARMS,
        verdicts=VERDICTS,
        recompute=lambda arm, seed: _protocol_accuracy(
            arm, seed, train, val, found.get("device", torch.device("cpu"))
        ),
        tolerance=0.01,
        what="validation accuracy",
        value_range=(0.0, 1.0),
        range_hint="an accuracy is a fraction between 0 and 1, as evaluate(...)[1] returns it "
        "(not a percentage).",
        rerun="all",
        verify_run=_verify_run(ex, run, reported, len(train), found),
        explain=_explain_lr_runs,
        protocol=_PROTOCOL,
    )
    passed(
        ex,
        "a rerun of one reported run gives the same accuracy at the 10× learning rate, and "
        "the verdict follows the chapter's noise rule",
    )
