"""Checks of the chapter 3 exercises: activations: dead units, epochs to a target accuracy, a
silent-unit counter built on forward hooks, and an experiment on large learning rates."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import diagnostics, hooks
from ..data import FashionMNISTTensors, TensorLoader, load_tensors
from ..models import ACTIVATIONS, FashionCNN
from ..train import eval_mode, fit, seed_everything
from ._common import (
    aliases,
    call,
    failure,
    passed,
    raise_first,
    refuse,
    reported_runs_verdict,
    same_data,
)

__all__ = ["check_count_dead", "check_epochs_to_reach", "check_silent_per_layer"]
__all__ += ["check_silent_experiment", "EXPERIMENT_ARMS", "EXPERIMENT_VERDICTS", "TASK_LR"]


def _scalar(result: Any) -> Any:
    """A one-element tensor as a Python number; anything else unchanged."""
    return result.item() if isinstance(result, torch.Tensor) and result.numel() == 1 else result


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _pick(result: Any, mistakes: Iterable[tuple[Any, str]], default: str) -> str:
    """The hint of the first mistake whose answer equals ``result``, else ``default``."""
    return next((hint for answer, hint in mistakes if answer == result), default)


# --- 3.1 ---------------------------------------------------------------------------------------


def _dead_cases() -> list[tuple[str, torch.Tensor]]:
    """Post-ReLU activations with known dead units (a unit that fires once is alive)."""
    g = torch.Generator().manual_seed(0)
    conv = torch.rand(6, 5, 4, 4, generator=g)
    conv[:, [1, 3, 4]] = 0  # channels 1 and 3 dead; 4 fires in one image at one position
    conv[2, 4, 3, 0], conv[0, 0] = 0.7, 0  # and channel 0 is silent in image 0 only
    fc = torch.rand(5, 7, generator=g)
    fc[:, [0, 5, 6]] = 0
    fc[4, 6] = 0.1  # feature 6 fires in the last image only
    return [
        ("conv activations [6, 5, 4, 4]", conv),
        ("fully connected activations [5, 7]", fc),
        ("all alive [3, 2, 2, 2]", torch.ones(3, 2, 2, 2)),
        ("all dead [2, 3]", torch.zeros(2, 3)),
    ]


def check_count_dead(fn: Callable[[torch.Tensor], int]) -> None:
    """Exercise 3.1: ``count_dead(activations) -> int``: units (dim 1) of post-ReLU ``[N, C, H,
    W]`` or ``[N, F]`` activations that are zero for every image and position."""
    ex, cases = "3.1", _dead_cases()
    for case, acts in cases:
        expected = int(diagnostics.silent_units(acts).sum())
        hint = "handle 4-d [N, C, H, W] and 2-d [N, F] inputs: dim 1 first, flatten the rest."
        got = _scalar(call(ex, f"count_dead on {case}", fn, acts.clone(), hint=hint))
        not_int = f"returned {type(got).__name__} {got!r}, not an int"
        raise_first(ex, (not _is_int(got), not_int, "return a Python int (int(...))."))
        if got == expected:
            continue
        zero_somewhere = (acts.flatten(2).amax(-1) if acts.dim() == 4 else acts) == 0
        mistakes = [
            (int((acts == 0).sum()), "count units (channels or features), not zero elements."),
            (int(zero_somewhere.any(0).sum()), "a unit is dead if zero for *every* image."),
        ]
        hint = _pick(got, mistakes, "a unit is dim 1: dead if its max over the rest is 0.")
        raise failure(ex, f"returned {got} on {case}, expected {expected}", hint)
    passed(ex, f"count_dead is right on {len(cases)} hand-built cases")


# --- 3.2 ---------------------------------------------------------------------------------------

_EPOCHS_TO_CASES: tuple[tuple[tuple[float, ...], float, int | None], ...] = (
    ((0.50, 0.86, 0.70, 0.90), 0.85, 2),  # the first time, not the best epoch
    ((0.70, 0.80, 0.84, 0.86, 0.85), 0.84, 3),  # reached exactly: >= counts
    ((0.90, 0.80, 0.95), 0.85, 1),  # the first epoch already
    ((0.50, 0.60), 0.85, None),  # never
)


def check_epochs_to_reach(fn: Callable[[Sequence[float], float], int | None]) -> None:
    """Exercise 3.2: ``epochs_to_reach(accuracies, target)``: the first epoch (from 1) whose
    accuracy is ``>= target``, or ``None``."""
    ex = "3.2"
    for accs, target, expected in _EPOCHS_TO_CASES:
        case, hint = f"{list(accs)} with target {target}", "read the error above."
        got = _scalar(call(ex, f"epochs_to_reach({case})", fn, list(accs), target, hint=hint))
        not_int = f"{case}: returned {type(got).__name__} {got!r}, not an int or None"
        hint = "return the epoch as an int, counted from 1, or None if never reached."
        raise_first(ex, (got is not None and not _is_int(got), not_int, hint))
        if got == expected and (got is None) == (expected is None):
            continue
        strict = next((i for i, a in enumerate(accs, start=1) if a > target), None)
        if expected is None:
            hint = "return None when no epoch reaches the target (not 0, -1 or len)."
        elif got is None:
            hint = f"epoch {expected} reaches the target ({accs[expected - 1]} >= {target})."
        else:
            mistakes = [
                (expected - 1, "epochs are counted from 1: the first epoch is 1, not index 0."),
                (strict, "reaching the target exactly counts: use >=."),
                (int(np.argmax(accs)) + 1, "return the *first* epoch that reaches the target."),
            ]
            hint = _pick(got, mistakes, f"the first epoch with accuracy >= {target} counts.")
        raise failure(ex, f"{accs} with target {target}: got {got!r}, expected {expected}", hint)
    passed(ex, f"epochs_to_reach is right on {len(_EPOCHS_TO_CASES)} curves")


# --- 3.3 ---------------------------------------------------------------------------------------


def _probe(kind: type[nn.Module], zero_input: bool = False) -> tuple[nn.Module, list]:
    """A nested CNN on 8×8 images and two batches (dark, bright): conv channels 0, 1 never
    fire, 2 fires on bright images only, 3 on dark ones only; ``head.1`` features 0 and 3 never
    fire (``zero_input``: feature 5's input is 0 everywhere); a ReLU ``gate`` on the logits."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        conv, bn, fc = nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.Linear(96, 8)
        features = nn.Sequential(conv, bn, kind(), nn.MaxPool2d(2))
        head = nn.Sequential(nn.Flatten(), fc, kind(), nn.Linear(8, 3))
        model = nn.Sequential(OrderedDict(features=features, head=head, gate=nn.ReLU()))
    with torch.no_grad():
        bn.running_mean.fill_(0.3)
        bn.running_var.fill_(2.0)
        conv.weight[2:4], conv.bias[2:4] = torch.tensor([1.0, -1.0]).view(2, 1, 1, 1), 0.0
        bn.running_mean[2:4], bn.running_var[2:4], bn.weight[2:4] = 0.0, 1.0, 1.0
        bn.bias[:4] = torch.tensor([-100.0, -100.0, -5.0, 0.5])
        fc.bias[[0, 3]] = -100.0
        if zero_input:
            fc.weight[5], fc.bias[5] = 0.0, 0.0
    g = torch.Generator().manual_seed(1)
    dark = torch.rand(4, 1, 8, 8, generator=g) * 0.1
    bright = 1 - torch.rand(3, 1, 8, 8, generator=g) * 0.1
    return model, [(dark, torch.zeros(4)), (bright, torch.zeros(3))]


def _unit_maxima(model: nn.Module, batches: Iterable, kind: Any) -> tuple[dict, dict]:
    """Per ``kind`` module, ``[batches, units]``: each unit's largest input, and its largest
    ``|output|``, in each batch; eval mode, no gradients, recorded by the package's hooks."""
    names = [n for n, m in model.named_modules() if isinstance(m, kind)]
    device, per = next(model.parameters()).device, ({n: [] for n in names}, {n: [] for n in names})
    with (
        eval_mode(model),
        torch.no_grad(),
        hooks.capture_activations(model, names, inputs=True) as inputs,
        hooks.capture_activations(model, names) as outputs,
    ):
        for x, _ in batches:
            model(x.to(device))
            for seen, found in zip((inputs, outputs), per, strict=True):
                for n in names:
                    t = torch.cat([a.transpose(0, 1).flatten(1) for a in seen[n]], 1)
                    found[n].append((t if seen is inputs else t.abs()).amax(1))
                    seen[n].clear()
    return tuple({n: torch.stack(v) for n, v in found.items()} for found in per)


def _counts(maxima: Mapping[str, torch.Tensor], rows=slice(None), strict=False) -> dict:
    """``{name: (silent, units)}`` from :func:`_unit_maxima`, over the batches ``rows``."""
    tops = {n: m[rows].amax(0) for n, m in maxima.items()}
    return {n: (int((t < 0 if strict else t <= 0).sum()), len(t)) for n, t in tops.items()}


def _as_counts(ex: str, result: Any) -> dict[str, tuple[int, int]]:
    """The learner's answer as ``{name: (silent, units)}`` of whole numbers, or a ❌."""
    hint = "return a dict {module name: (silent units, units)} with two ints per layer."
    if not isinstance(result, Mapping):
        raise failure(ex, f"returned {type(result).__name__}, not a dict", hint)
    counts = {}
    for name, pair in result.items():
        values = [_scalar(v) for v in pair] if isinstance(pair, tuple | list) else []
        number = [
            isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in values
        ]
        if len(values) != 2 or not all(number) or not all(float(v).is_integer() for v in values):
            raise failure(ex, f"{name!r}: {pair!r} is not a pair of ints (silent, units)", hint)
        counts[name] = (int(values[0]), int(values[1]))
    return counts


_COUNTERS = ("dead_units", "silent_units", "capture_activations")
_HOOK_SHORTCUTS = [(hooks, "capture_activations"), *((diagnostics, n) for n in _COUNTERS)]


def check_silent_per_layer(
    fn: Callable[[nn.Module, Iterable, type[nn.Module]], Mapping[str, tuple[int, int]]],
) -> None:
    """Exercise 3.3: ``silent_per_layer(model, batches, kind) -> {name: (silent, units)}`` on
    forward hooks; the mode, BatchNorm statistics and hooks are left as they were, even on
    errors. The course's counters are switched off while it runs."""
    ex, summary = "3.3", []
    shortcuts = _HOOK_SHORTCUTS + aliases([fn], _HOOK_SHORTCUTS)
    zero_case = "nn.ReLU, with a unit whose input is exactly 0 on every image (head.1 feature 5)"
    for kind, training, case in [
        (nn.ReLU, True, "nn.ReLU"),
        (nn.LeakyReLU, False, "nn.LeakyReLU"),
        (nn.ReLU, True, zero_case),
    ]:
        model, batches = _probe(kind, zero_input=case == zero_case)
        maxima, out_maxima = _unit_maxima(model.train(training), batches, kind)
        expected, state = _counts(maxima), {k: v.clone() for k, v in model.state_dict().items()}
        with refuse(ex, shortcuts, task="the hook-based counter"):
            try:
                what = f"silent_per_layer(model, batches, {case})"
                got = call(ex, what, fn, model, list(batches), kind, hint="read the error above.")
            finally:
                left = hooks.hook_count(model)
        changed = [k for k, v in model.state_dict().items() if not torch.equal(v, state[k])]
        mode = "training" if training else "eval"
        raise_first(ex,
            (left, f"{left} hook(s) are still registered after silent_per_layer returned",
             "keep the handles of register_forward_hook; call handle.remove() on each."),
            (changed, f"the call changed {changed}", "run the model in eval mode (model.eval()) "
             "under torch.no_grad(): in training mode BatchNorm updates its statistics."),
            ({m.training for m in model.modules()} != {training}, f"the model was in {mode} "
             "mode before the call and is not any more", "restore it: model.train(was_training)."),
        )  # fmt: skip
        got = _as_counts(ex, got)
        if set(got) != set(expected):
            layers = f"with {case}: layers {sorted(map(repr, got))}, expected {sorted(expected)}"
            hint = "hook every module of type kind, named as model.named_modules() names it."
            raise failure(ex, layers, hint)
        if got == expected:
            summary += [f"{case} {expected}"] if case != zero_case else []
            continue
        combine = "combine all the batches: a unit is silent only if it never fired on any."
        mistakes = [(_counts(maxima, slice(i, i + 1)), combine) for i in range(len(batches))] + [
            (_counts(out_maxima), "count on the activation's *input* (inputs[0] in the "
             "hook): LeakyReLU's output is never exactly 0."),
            (_counts(maxima, strict=True), "an input of exactly 0 everywhere never fires "
             "either (ReLU(0) = 0): count largest inputs <= 0, not < 0."),
        ]  # fmt: skip
        hint = _pick(got, mistakes, "per unit (dim 1), take the max over all else; silent if <= 0.")
        raise failure(ex, f"with {case}: got {got}, expected {expected}", hint)
    model, batches = _probe(nn.ReLU)
    with refuse(ex, shortcuts, task="the hook-based counter"):
        try:
            fn(model, [batches[0], (torch.zeros(2, 1, 10, 10), torch.zeros(2))], nn.ReLU)
        except (NotImplementedError, AssertionError):
            raise
        except Exception:  # the forward pass is meant to fail here
            pass
    problem = "hooks left or the mode changed when the forward pass raises (10×10 images)"
    hint = "remove the hooks and restore the mode in a `finally:` block."
    raise_first(ex, (hooks.hook_count(model) or not model.training, problem, hint))
    passed(
        ex,
        "silent units per layer: " + "; ".join(summary) + "; mode restored, no hook left, "
        "also when the forward pass raises",
    )


# --- 3.4 ---------------------------------------------------------------------------------------

EXPERIMENT_ARMS = ("relu", "leaky_relu")
EXPERIMENT_VERDICTS = ("more in ReLU", "more in LeakyReLU", "within noise")
TASK_LR = 10 * 1e-3  #: task 3.4: Adam at 10× the usual 1e-3, one epoch on train_small
_PROTOCOL = "the task's protocol (train_one(activation, LARGE_LR, seed), inputs <= 0 on val_loader)"


def _task_data() -> tuple[FashionMNISTTensors, FashionMNISTTensors]:
    """Task 3.4's ``train_small`` (2,000 images) and ``val_small`` (1,000)."""
    splits = load_tensors()
    return splits["train"].random_subset(2000, seed=0), splits["val"].random_subset(1000, seed=0)


def _rerun_shares(activation, seed, train_data, probe, lr, device) -> dict[str, float]:
    """One run of the task's protocol: its silent share (``"task"``), and the shares that the
    counting mistakes of :data:`_MISTAKES` would give."""
    with torch.random.fork_rng(devices=[]):
        seed_everything(seed)
        model = FashionCNN(activation=activation).to(device)
        batches = TensorLoader(train_data, 64, shuffle=True, seed=seed, device=device)
        fit(model, batches, None, 1, torch.optim.Adam(model.parameters(), lr=lr), progress=False)
    maxima, out_maxima = _unit_maxima(model, probe, ACTIVATIONS[activation])

    def share(counts: dict) -> float:
        return sum(s for s, _ in counts.values()) / max(sum(n for _, n in counts.values()), 1)

    return {
        "task": share(_counts(maxima)),
        "layer mean": float(np.mean([s / n for s, n in _counts(maxima).values()])),
        "output": share(_counts(out_maxima)),
        "first batch": share(_counts(maxima, slice(0, 1))),
        "last batch": share(_counts(maxima, slice(-1, None))),
    }


_FIX = "Fix silent_per_layer (Task 3.3), then recompute the shares."
_MISTAKES = {  # a share the check recomputes: the mistake it names
    "output": "your shares match counting on the activation's *output* (== 0): LeakyReLU's "
    f"output is never exactly 0. Count on the input (<= 0). {_FIX}",
    "first batch": f"your shares match the first batch of val_loader only. {_FIX}",
    "last batch": f"your shares match the last batch of val_loader only. {_FIX}",
    "layer mean": "your shares match the mean of the per-layer shares: sum the silent units "
    "and all units over all activation layers first, then divide.",
}


def check_silent_experiment(
    shares: Mapping[str, Mapping[int, float]],
    verdict: str,
    train_data: FashionMNISTTensors,
    probe: Iterable,
    lr: float,
    device: str | torch.device = "cpu",
) -> None:
    """Exercise 3.4: does a 10× learning rate silence more ReLU than LeakyReLU units? Every run
    of ``shares`` (``{arm: {seed: share}}``) is retrained on the task's data and recounted; the
    verdict must follow the noise rule."""
    ex, (train, val) = "3.4", _task_data()
    wrong_lr = isinstance(lr, bool) or not isinstance(lr, int | float)
    raise_first(ex,
        (wrong_lr or not math.isclose(lr, TASK_LR), f"lr={lr!r}, but the task's is {TASK_LR:g}",
         "set LARGE_LR = 10 * LR (LR = 1e-3), train every run with it and pass it as lr."),
        (not same_data(train_data, train), "train_data is not the task's train_small",
         "train every run on train_small and pass it as train_data."),
        (hasattr(probe, "images") and not same_data(probe, val), "probe is not val_loader: "
         "its images are not val_small", "count on val_loader and pass it as probe."),
    )  # fmt: skip
    on, details, tolerance = torch.device(device), {}, 0.02

    def recompute(arm: str, seed: int) -> float:
        probe = TensorLoader(val, 500, device=on)
        details[arm, seed] = _rerun_shares(arm, seed, train, probe, TASK_LR, on)
        return details[arm, seed]["task"]

    def explain(reported: Mapping, again: Mapping) -> str | None:
        wrong = [r for r in again if not abs(again[r] - reported[r]) <= tolerance]
        for mistake, hint in _MISTAKES.items():
            if all(abs(details[r][mistake] - reported[r]) <= 1e-3 for r in wrong):
                return hint
        other = dict(zip(EXPERIMENT_ARMS, reversed(EXPERIMENT_ARMS), strict=True))
        swapped = [abs(again.get((other[a], s), 9) - reported[a, s]) for a, s in wrong]
        swap = "the arms are swapped: store each share under the activation it was trained with."
        return swap if all(d <= tolerance for d in swapped) else None

    reported_runs_verdict(
        ex, shares, verdict, arms=EXPERIMENT_ARMS, verdicts=EXPERIMENT_VERDICTS,
        recompute=recompute, tolerance=tolerance, what="silent share", value_range=(0.0, 1.0),
        range_hint="a share is silent units / all units, between 0 and 1.", rerun="all",
        explain=explain, protocol=_PROTOCOL,
    )  # fmt: skip
    passed(
        ex,
        "the shares come from real runs (a rerun of one of them agrees), and the verdict "
        "follows the noise rule",
    )
