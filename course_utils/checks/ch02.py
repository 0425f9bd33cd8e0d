"""Checks of the chapter 2 exercises: BatchNorm: placement in a CNN and the forward computation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._common import (
    build_model,
    failure,
    passed,
)

__all__ = [
    "check_batchnorm_fn",
    "check_batchnorm_placement",
]


# --- 2.1 ---------------------------------------------------------------------------------------


def check_batchnorm_placement(model_cls: Callable[..., nn.Module]) -> None:
    """Exercise 2.1: a CNN with a ``BatchNorm2d`` directly after every ``Conv2d``.

    ``model_cls()`` is traced on a batch ``[4, 1, 28, 28]`` with forward hooks: the output of every
    convolution must be the very tensor that a ``BatchNorm2d`` receives next, with
    ``num_features`` equal to the conv's ``out_channels``; every ``BatchNorm2d`` must be used; the
    logits must have shape ``[4, 10]``.

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
    biases = sum(c.bias is not None for c in convs)
    note = (
        "conv biases dropped (BatchNorm's shift replaces them)"
        if biases == 0
        else f"{biases} conv(s) keep a bias, which BatchNorm makes redundant (bias=False saves it)"
    )
    passed(
        ex,
        f"each of the {len(convs)} convs feeds a BatchNorm2d with matching num_features; {note}",
    )


# --- 2.2 ---------------------------------------------------------------------------------------


def _bn_cases() -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    shifted = torch.randn(8, 3, 5, 5, generator=g) * torch.tensor([1.0, 3.0, 0.5]).view(
        1, 3, 1, 1
    ) + torch.tensor([2.0, -1.0, 0.0]).view(1, 3, 1, 1)
    return [
        ("[8, 3, 5, 5], channels with different means and scales", shifted),
        ("[2, 4, 1, 1], a tiny batch", torch.randn(2, 4, 1, 1, generator=g)),
    ]


def check_batchnorm_fn(fn: Callable[..., Any]) -> None:
    """Exercise 2.2: ``batchnorm_train(x, gamma, beta, running_mean, running_var, momentum, eps)``.

    Must return ``(y, new_running_mean, new_running_var)`` exactly as ``nn.BatchNorm2d`` computes
    them in training mode: per-channel statistics over ``(N, H, W)``, the *biased* variance to
    normalise, the *unbiased* variance in the running update, and
    ``new = (1 - momentum) * old + momentum * batch``.

    Raises:
        AssertionError: with a hint naming the likely mistake.
    """
    ex = "2.2"
    for case, x in _bn_cases():
        c = x.shape[1]
        gamma, beta = torch.linspace(0.5, 2.0, c), torch.linspace(-1.0, 1.0, c)
        rm, rv = torch.linspace(-0.5, 0.5, c), torch.linspace(0.5, 1.5, c)
        ref_rm, ref_rv = rm.clone(), rv.clone()
        ref_y = torch.nn.functional.batch_norm(
            x, ref_rm, ref_rv, gamma, beta, training=True, momentum=0.1, eps=1e-5
        )
        try:
            result = fn(x.clone(), gamma.clone(), beta.clone(), rm.clone(), rv.clone(), 0.1, 1e-5)
        except NotImplementedError:
            raise
        except Exception as err:
            raise failure(
                ex,
                f"batchnorm_train raised {type(err).__name__} on case {case}: {err}",
                "reduce over dims (0, 2, 3) and reshape per-channel vectors to [1, C, 1, 1].",
            ) from err
        if not isinstance(result, tuple | list) or len(result) != 3:
            raise failure(
                ex, "did not return three tensors", "return (y, new_running_mean, new_running_var)."
            )
        y, new_rm, new_rv = (torch.as_tensor(r) for r in result)
        if tuple(y.shape) != tuple(x.shape) or tuple(new_rm.shape) != (c,):
            raise failure(
                ex,
                f"shapes: y {tuple(y.shape)}, running_mean {tuple(new_rm.shape)} on case {case}",
                f"y has x's shape {tuple(x.shape)}; the running statistics have one value per "
                f"channel ({c},).",
            )
        if not torch.allclose(y, ref_y, atol=1e-4):
            mean = x.mean(dim=(0, 2, 3), keepdim=True)
            unbiased = (x - mean) / torch.sqrt(x.var(dim=(0, 2, 3), keepdim=True) + 1e-5)
            bshape = (1, c, 1, 1)
            if torch.allclose(y, unbiased * gamma.view(bshape) + beta.view(bshape), atol=1e-4):
                hint = "normalise with the biased variance (unbiased=False), as BatchNorm does."
            elif torch.allclose(
                y,
                (x - mean) / torch.sqrt(x.var(dim=(0, 2, 3), keepdim=True, unbiased=False) + 1e-5),
                atol=1e-4,
            ):
                hint = "apply the learned scale and shift: gamma * x_hat + beta, per channel."
            else:
                hint = (
                    "the statistics are per channel, over the batch and both spatial dims: "
                    "x.mean(dim=(0, 2, 3)); not per image or per pixel."
                )
            raise failure(ex, f"y differs from nn.BatchNorm2d on case {case}", hint)
        if not torch.allclose(new_rm, ref_rm, atol=1e-5):
            hint = (
                "new = (1 - momentum) * old + momentum * batch_mean (momentum weighs the batch)."
                if torch.allclose(new_rm, 0.9 * x.mean(dim=(0, 2, 3)) + 0.1 * rm, atol=1e-5)
                else "update the running mean with the batch mean per channel."
            )
            raise failure(ex, f"new running_mean is wrong on case {case}", hint)
        if not torch.allclose(new_rv, ref_rv, atol=1e-4):
            biased = x.var(dim=(0, 2, 3), unbiased=False)
            hint = (
                "the running variance uses the *unbiased* batch variance (divide by n - 1), "
                "even though y is normalised with the biased one."
                if torch.allclose(new_rv, 0.9 * rv + 0.1 * biased, atol=1e-5)
                else "new = (1 - momentum) * old + momentum * unbiased batch variance."
            )
            raise failure(ex, f"new running_var is wrong on case {case}", hint)
    passed(
        ex,
        "y, running_mean and running_var match torch.nn.functional.batch_norm (training mode) "
        f"on {len(_bn_cases())} cases",
    )
