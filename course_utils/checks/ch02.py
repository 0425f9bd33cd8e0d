"""Checks of the chapter 2 exercises: BatchNorm's placement in a CNN, its forward computation in
both modes, and an experiment of the learner's own."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._common import aliases, build_model, call, failure, passed, refuse, reported_runs_verdict

__all__ = [
    "ARMS",
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
        hint = (
            "num_features must equal the channels coming out of the conv before it "
            "(conv2 has 64 output channels)."
            if "running_mean" in str(err) or "weight" in str(err) or "features" in str(err)
            else "use nn.BatchNorm2d (for [N, C, H, W] feature maps) and check each num_features."
        )
        raise failure(ex, f"the forward pass raised {type(err).__name__}: {err}", hint) from err
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
    y, new_rm, new_rv = (torch.as_tensor(r) for r in result)
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


def _rerun(ex: str, run: Callable[[str, int], float], lr: float) -> Callable[[str, int], float]:
    """``run`` for the recomputation, checking that it trains at ``lr`` and that BatchNorm2d
    layers run exactly in the ``"batch"`` arm."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    def rerun(arm: str, seed: int) -> float:
        lrs: list[float] = []
        layer_types: set[str] = set()
        step_hook = register_optimizer_step_pre_hook(
            lambda opt, _a, _k: lrs.extend(group["lr"] for group in opt.param_groups)
        )
        forward_hook = nn.modules.module.register_module_forward_hook(
            lambda module, _i, _o: layer_types.add(type(module).__name__)
        )
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
            step_hook.remove()
            forward_hook.remove()
        if not lrs or not all(math.isclose(v, lr) for v in lrs):
            shown = sorted(set(lrs))[:3] if lrs else "no optimizer step at all"
            raise failure(
                ex,
                f"run({arm!r}, {seed}) trained with learning rate {shown}, not {lr:g}",
                "the question is about the 10× larger learning rate: give it to the optimiser.",
            )
        has_bn = "BatchNorm2d" in layer_types
        if has_bn != (arm == ARMS[0]):
            raise failure(
                ex,
                f"run({arm!r}, {seed}) {'used' if has_bn else 'used no'} BatchNorm2d layers",
                "build FashionCNN(norm=norm): 'batch' has BatchNorm, 'none' has none.",
            )
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        return float(value)

    return rerun


def check_lr_experiment(
    run: Callable[[str, int], float], reported: Any, verdict: Any, lr: float
) -> None:
    """Exercise 2.3: does BatchNorm still help at a 10× larger learning rate?

    ``reported`` is ``{"batch": {seed: val_acc}, "none": {seed: val_acc}}`` with the same two
    or more seeds per arm; ``verdict`` one of :data:`VERDICTS`, which must be the one that the
    chapter's noise rule gives for these numbers
    (:attr:`course_utils.experiments.Comparison.beyond_noise`). One reported run is recomputed
    with the learner's ``run(arm, seed)`` and must come back the same, trained at ``lr``, with
    BatchNorm2d layers exactly in the ``"batch"`` arm.

    Raises:
        AssertionError: with the failing case and a hint.
    """
    ex = "2.3"
    reported_runs_verdict(
        ex,
        reported,
        verdict,
        arms=ARMS,
        verdicts=VERDICTS,
        recompute=_rerun(ex, run, lr),
        tolerance=1e-6,
        what="validation accuracy",
    )
    passed(
        ex,
        "a rerun of one reported run gives the same accuracy at the 10× learning rate, and "
        "the verdict follows the chapter's noise rule",
    )
