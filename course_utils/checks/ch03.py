"""Checks of the chapter 3 exercises: activations: dead units, epochs to a target accuracy, a
silent-unit counter built on forward hooks, and an experiment on large learning rates."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import diagnostics, hooks
from ..data import FashionMNISTTensors, TensorLoader, load_tensors
from ..hooks import hook_count
from ..models import ACTIVATIONS, FashionCNN
from ..train import fit, seed_everything
from ._common import (
    aliases,
    call,
    failure,
    passed,
    refuse,
    reported_runs_verdict,
    same_data,
)

__all__ = [
    "check_count_dead",
    "check_epochs_to_reach",
    "check_silent_experiment",
    "check_silent_per_layer",
    "EXPERIMENT_ARMS",
    "EXPERIMENT_VERDICTS",
    "TASK_LR",
]


# --- 3.1 ---------------------------------------------------------------------------------------


def _dead_cases() -> list[tuple[str, torch.Tensor, int]]:
    """Post-ReLU activations with a known number of dead units."""
    g = torch.Generator().manual_seed(0)
    conv = torch.rand(6, 5, 4, 4, generator=g)
    conv[:, [1, 3]] = 0  # channels 1 and 3 never fire: 2 dead
    conv[:, 4] = 0
    conv[2, 4, 3, 0] = 0.7  # channel 4 fires once, in one image at one position: alive
    conv[0, 0] = 0  # channel 0 is silent in image 0 only: alive
    fc = torch.rand(5, 7, generator=g)
    fc[:, [0, 5, 6]] = 0
    fc[4, 6] = 0.1  # feature 6 fires in the last image only: alive
    return [
        ("conv activations [6, 5, 4, 4]", conv, 2),
        ("fully connected activations [5, 7]", fc, 2),
        ("all alive [3, 2, 2, 2]", torch.ones(3, 2, 2, 2), 0),
        ("all dead [2, 3]", torch.zeros(2, 3), 3),
    ]


def check_count_dead(fn: Callable[[torch.Tensor], int]) -> None:
    """Exercise 3.1: ``count_dead(activations) -> int`` for post-ReLU ``[N, C, H, W]`` or
    ``[N, F]`` activations: units (channels or features) that are zero for every image and
    position, on hand-built cases.

    Raises:
        AssertionError: with a hint (zero *elements*, dead in *some* image, wrong dimension).
    """
    ex = "3.1"
    for case, acts, expected in _dead_cases():
        result = call(
            ex,
            f"count_dead on {case}",
            fn,
            acts.clone(),
            hint="handle both 4-d [N, C, H, W] and 2-d [N, F] inputs: move the unit dimension "
            "(dim 1) first and flatten the rest.",
        )
        if isinstance(result, torch.Tensor) and result.numel() == 1:
            result = result.item()
        if isinstance(result, bool) or not isinstance(result, int | np.integer):
            raise failure(
                ex,
                f"returned {type(result).__name__} {result!r}, not an int",
                "return a Python int (int(...) or .item()).",
            )
        if result == expected:
            continue
        per_image = (
            int((acts.flatten(2).amax(-1) == 0).any(0).sum())
            if acts.dim() == 4
            else int((acts == 0).any(0).sum())
        )
        if result == int((acts == 0).sum()):
            hint = "count units (channels or features), not zero elements."
        elif result == per_image:
            hint = "a unit is dead only if it is zero for *every* image, not for some image."
        else:
            hint = (
                "a unit is dim 1 (a channel of [N, C, H, W] or a feature of [N, F]); it is dead "
                "if its maximum over all other dimensions is 0."
            )
        raise failure(ex, f"returned {result} on {case}, expected {expected}", hint)
    passed(ex, f"count_dead is right on {len(_dead_cases())} hand-built cases")


# --- 3.2 ---------------------------------------------------------------------------------------


_EPOCHS_TO_CASES: tuple[tuple[tuple[float, ...], float, int | None], ...] = (
    ((0.50, 0.86, 0.70, 0.90), 0.85, 2),  # the first time, not the best epoch
    ((0.70, 0.80, 0.84, 0.86, 0.85), 0.84, 3),  # reached exactly: >= counts
    ((0.90, 0.80, 0.95), 0.85, 1),  # the first epoch already
    ((0.50, 0.60), 0.85, None),  # never
)


def check_epochs_to_reach(fn: Callable[[Sequence[float], float], int | None]) -> None:
    """Exercise 3.2: ``epochs_to_reach(accuracies, target)``: the first epoch (counted from 1)
    whose accuracy is ``>= target``, or ``None`` if none is.

    Raises:
        AssertionError: with a hint (0-based epochs, ``>`` instead of ``>=``, best epoch…).
    """
    ex = "3.2"
    for accs, target, expected in _EPOCHS_TO_CASES:
        result = call(
            ex,
            f"epochs_to_reach({list(accs)}, {target})",
            fn,
            list(accs),
            target,
            hint="read the error above.",
        )
        if isinstance(result, torch.Tensor) and result.numel() == 1:
            result = result.item()
        if result is not None and (
            isinstance(result, bool) or not isinstance(result, int | np.integer)
        ):
            raise failure(
                ex,
                f"{list(accs)} with target {target}: returned {type(result).__name__} "
                f"{result!r}, not an int or None",
                "return the epoch as an int, counted from 1 (or None when no epoch reaches "
                "the target).",
            )
        if result == expected and (result is None) == (expected is None):
            continue
        strict = next((i for i, a in enumerate(accs, start=1) if a > target), None)
        best = max(range(len(accs)), key=lambda i: accs[i]) + 1
        if expected is None:
            hint = "return None when no epoch reaches the target (not 0, -1 or len)."
        elif result is None:
            hint = (
                f"epoch {expected} reaches the target ({accs[expected - 1]} >= {target}): "
                "return it; None is only for a curve that never reaches the target."
            )
        elif result == expected - 1:
            hint = "epochs are counted from 1: the first epoch is epoch 1, not index 0."
        elif result == strict:
            hint = "reaching the target exactly counts: use >=."
        elif result == best:
            hint = "return the *first* epoch that reaches the target, not the best one."
        else:
            hint = (
                f"the first epoch with accuracy >= {target} is epoch {expected} (accuracy "
                f"{accs[expected - 1]}), counted from 1; you returned {result!r}."
            )
        raise failure(ex, f"{accs} with target {target}: got {result!r}, expected {expected}", hint)
    passed(ex, f"epochs_to_reach is right on {len(_EPOCHS_TO_CASES)} curves")


# --- 3.3 ---------------------------------------------------------------------------------------


class _ProbeNet(nn.Module):
    """A small CNN on 8×8 images, nested in ``nn.Sequential``s, with ``kind`` activations, a
    BatchNorm (so a forward pass in training mode is visible) and a ReLU ``gate`` on the logits
    (a module of another type than ``kind`` when ``kind`` is not ReLU)."""

    def __init__(self, kind: type[nn.Module]) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), kind(), nn.MaxPool2d(2)
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(6 * 4 * 4, 8), kind(), nn.Linear(8, 3))
        self.gate = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.head(self.features(x)))


def _probe_fixture(kind: type[nn.Module]) -> tuple[nn.Module, list[tuple[torch.Tensor, Any]]]:
    """A ``_ProbeNet`` with known silent units, and two batches: dark images, then bright ones.

    Conv channels 0 and 1 are silent everywhere (BatchNorm shift -100); channel 2 sums its 3×3
    patch and is shifted by -5, so it fires on the bright batch only; channel 3 subtracts its
    patch and is shifted by +0.5, so it fires on the dark batch only; ``head.1`` features 0 and
    3 are silent (bias -100).
    """
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = _ProbeNet(kind)
    conv, bn = model.features[0], model.features[1]
    with torch.no_grad():
        bn.running_mean.fill_(0.3)
        bn.running_var.fill_(2.0)
        bn.bias[[0, 1]] = -100.0
        conv.weight[2] = 1.0
        conv.bias[2] = 0.0
        conv.weight[3] = -1.0
        conv.bias[3] = 0.0
        bn.running_mean[2:4], bn.running_var[2:4], bn.weight[2:4] = 0.0, 1.0, 1.0
        bn.bias[2], bn.bias[3] = -5.0, 0.5
        model.head[1].bias[[0, 3]] = -100.0
    g = torch.Generator().manual_seed(1)
    dark = torch.rand(4, 1, 8, 8, generator=g) * 0.1
    bright = 1 - torch.rand(3, 1, 8, 8, generator=g) * 0.1
    return model, [(dark, torch.zeros(4)), (bright, torch.zeros(3))]


def _reference_silent(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, Any]],
    kind: type[nn.Module],
    *,
    on_output: bool = False,
    strict: bool = False,
) -> dict[str, tuple[int, int]]:
    """Silent units per module of type ``kind`` (on its input, or its output ``== 0``);
    ``strict``: an input of exactly 0 counts as firing (the mistake ``< 0``)."""
    largest: dict[str, torch.Tensor] = {}

    def make_hook(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            t = output.ne(0).float() if on_output else inputs[0]
            m = t.detach().transpose(0, 1).flatten(1).amax(1)
            largest[name] = torch.maximum(largest[name], m) if name in largest else m

        return hook

    handles = [
        m.register_forward_hook(make_hook(n))
        for n, m in model.named_modules()
        if isinstance(m, kind)
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for x, _ in batches:
                model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: (int((m < 0 if strict else m <= 0).sum()), len(m)) for n, m in largest.items()}


_HOOK_SHORTCUTS: list[tuple[object, str]] = [
    (diagnostics, "dead_units"),
    (diagnostics, "silent_units"),
    (diagnostics, "capture_activations"),
    (hooks, "capture_activations"),
]


def _as_counts(ex: str, result: Any) -> dict[str, tuple[int, int]]:
    """The learner's answer as ``{name: (silent, units)}`` of ints, or a ❌."""
    hint = "return a dict {module name: (silent units, units)} with two ints per layer."
    if not isinstance(result, Mapping):
        raise failure(ex, f"returned {type(result).__name__}, not a dict", hint)
    counts = {}
    for name, pair in result.items():
        try:
            values = []
            for v in pair:
                v = v.item() if isinstance(v, torch.Tensor) else v
                if isinstance(v, bool) or not float(v).is_integer():
                    raise ValueError(f"{v!r} is not a whole number")
                values.append(int(v))
            silent, units = values
        except Exception as err:  # noqa: BLE001 - any malformed pair is the learner's mistake
            raise failure(
                ex, f"{name!r}: {pair!r} is not a pair of ints (silent, units)", hint
            ) from err
        counts[name] = (silent, units)
    return counts


def _check_zero_input(ex: str, fn: Callable[..., Any], shortcuts: list[tuple[object, str]]) -> None:
    """A unit whose input is exactly 0 on every image never fires (ReLU(0) = 0): silent.
    ``head.1`` feature 5 gets zero weights and bias, so its input is 0 everywhere."""
    model, batches = _probe_fixture(nn.ReLU)
    with torch.no_grad():
        model.head[1].weight[5] = 0.0
        model.head[1].bias[5] = 0.0
    expected = _reference_silent(model, batches, nn.ReLU)
    with refuse(ex, shortcuts, task="the hook-based counter"):
        raw = call(
            ex,
            "silent_per_layer(model, batches, nn.ReLU) with a unit whose input is always 0",
            fn,
            model,
            list(batches),
            nn.ReLU,
            hint="read the error above.",
        )
    result = _as_counts(ex, raw)
    if result == expected:
        return
    if result == _reference_silent(model, batches, nn.ReLU, strict=True):
        hint = (
            "a unit whose input is exactly 0 everywhere never fires either (ReLU(0) = 0, and "
            "its gradient is 0): count the units whose largest input is <= 0, not < 0."
        )
    else:
        hint = (
            "per unit (dim 1 of the input), take the maximum over every other dimension and "
            "every batch; the unit is silent if it is <= 0."
        )
    raise failure(
        ex,
        f"with a unit whose input is exactly 0 on every image (head.1 feature 5): got {result}, "
        f"expected {expected}",
        hint,
    )


def check_silent_per_layer(
    fn: Callable[[nn.Module, Iterable, type[nn.Module]], Mapping[str, tuple[int, int]]],
) -> None:
    """Exercise 3.3: ``silent_per_layer(model, batches, kind) -> {name: (silent, units)}``.

    For every module of ``model`` that is an instance of ``kind`` (named as
    ``model.named_modules()`` names it), count the units whose *input* was ``<= 0`` for every
    image and position of every batch. Run on a small nested CNN with known silent units, once
    with ``nn.ReLU`` (one unit fires only in the second batch) and once with ``nn.LeakyReLU``
    (whose output is never exactly 0). The model's mode and BatchNorm statistics must be left as
    they were, and no hook may remain, also when a batch makes the forward pass raise.
    ``course_utils.diagnostics.dead_units``/``silent_units`` and
    ``course_utils.hooks.capture_activations`` are switched off while it runs.

    Raises:
        AssertionError: with a hint.
    """
    ex = "3.3"
    shortcuts = _HOOK_SHORTCUTS + aliases([fn], _HOOK_SHORTCUTS)
    summary = []
    for kind, start_training in ((nn.ReLU, True), (nn.LeakyReLU, False)):
        model, batches = _probe_fixture(kind)
        model.train(start_training)
        expected = _reference_silent(model, batches, kind)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        with refuse(ex, shortcuts, task="the hook-based counter"):
            try:
                raw = call(
                    ex,
                    f"silent_per_layer(model, batches, nn.{kind.__name__})",
                    fn,
                    model,
                    list(batches),
                    kind,
                    hint="read the error above.",
                )
            finally:
                left = hook_count(model)
        if left:
            raise failure(
                ex,
                f"{left} hook(s) are still registered after silent_per_layer returned",
                "keep the handles that register_forward_hook returns and call handle.remove() "
                "on each, in a `finally:` block.",
            )
        changed = [k for k, v in model.state_dict().items() if not torch.equal(v, state[k])]
        if changed:
            raise failure(
                ex,
                f"the call changed {changed}",
                "run the model in eval mode (model.eval()) under torch.no_grad(): in training "
                "mode BatchNorm normalises with the batch and updates its running statistics.",
            )
        modes = {m.training for m in model.modules()}
        if modes != {start_training}:
            raise failure(
                ex,
                f"the model was in {'training' if start_training else 'eval'} mode before the "
                "call and is not any more",
                "remember model.training before switching to eval mode, and restore it with "
                "model.train(was_training) in the `finally:` block.",
            )
        result = _as_counts(ex, raw)
        if set(result) != set(expected):
            raise failure(
                ex,
                f"with nn.{kind.__name__}: layers {sorted(map(repr, result))}, expected "
                f"{sorted(expected)}",
                "hook every module m with isinstance(m, kind), and name it as "
                "model.named_modules() does (nested modules are named like 'features.2').",
            )
        if result == expected:
            summary.append(f"nn.{kind.__name__} {expected}")
            continue
        one_batch = [_reference_silent(model, [b], kind) for b in batches]
        on_output = _reference_silent(model, batches, kind, on_output=True)
        if result in one_batch:
            hint = (
                "combine all the batches: keep, per unit, the largest input seen so far; a "
                "unit is silent only if it never fired on any batch."
            )
        elif result == on_output:
            hint = (
                "count on the activation's *input* (the pre-activation, inputs[0] in the "
                "hook): LeakyReLU's output is negative, never exactly 0, where it is silent."
            )
        else:
            hint = (
                "per unit (dim 1 of the input), take the maximum over every other dimension "
                "and every batch; the unit is silent if it is <= 0."
            )
        raise failure(ex, f"with nn.{kind.__name__}: got {result}, expected {expected}", hint)
    _check_zero_input(ex, fn, shortcuts)
    model, batches = _probe_fixture(nn.ReLU)
    model.train()
    wrong_size = (torch.zeros(2, 1, 10, 10), torch.zeros(2))
    with refuse(ex, shortcuts, task="the hook-based counter"):
        try:
            fn(model, [batches[0], wrong_size], nn.ReLU)
        except (NotImplementedError, AssertionError):
            raise
        except Exception:  # noqa: BLE001 - the forward pass is meant to fail here
            pass
    if hook_count(model):
        raise failure(
            ex,
            "hooks stay registered when the forward pass raises (a batch of 10×10 images)",
            "remove the hooks in a `finally:` block (or a context manager), so that an error "
            "in model(x) cannot leave them behind.",
        )
    if not model.training:
        raise failure(
            ex,
            "the model stays in eval mode when the forward pass raises",
            "restore the mode in the `finally:` block too.",
        )
    passed(
        ex,
        "silent units per layer: " + "; ".join(summary) + "; mode restored, no hook left, "
        "also when the forward pass raises",
    )


# --- 3.4 ---------------------------------------------------------------------------------------

EXPERIMENT_ARMS = ("relu", "leaky_relu")
EXPERIMENT_VERDICTS = ("more in ReLU", "more in LeakyReLU", "within noise")

#: Task 3.4's protocol, pinned here (``LARGE_LR`` in the notebook is the learner's to edit):
#: Adam at 10× the usual 1e-3, one epoch on ``train_small`` in shuffled batches of 64.
TASK_LR = 10 * 1e-3
TASK_EPOCHS = 1
_PROTOCOL = (
    "the task's protocol (train_one(activation, LARGE_LR, seed): one epoch of Adam at lr 0.01 "
    "on train_small) and counted the units whose input was <= 0 on every image of val_loader"
)


def _task_data() -> tuple[FashionMNISTTensors, FashionMNISTTensors]:
    """Task 3.4's ``train_small`` (2,000 images) and ``val_small`` (1,000), as the setup cell
    of the chapter 3 exercises builds them."""
    splits = load_tensors()
    return splits["train"].random_subset(2000, seed=0), splits["val"].random_subset(1000, seed=0)


def _silent_counts(
    model: nn.Module, probe: Iterable, kind: type[nn.Module]
) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per ``kind`` module, per batch: each unit's largest input and whether its output was 0
    everywhere (eval mode, no gradients; the mode is restored, the hooks removed)."""
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def make_hook(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            largest = inputs[0].detach().transpose(0, 1).flatten(1).amax(1).cpu()
            zero_out = output.detach().eq(0).transpose(0, 1).flatten(1).all(1).cpu()
            seen.setdefault(name, []).append((largest, zero_out))

        return hook

    handles = [
        m.register_forward_hook(make_hook(n))
        for n, m in model.named_modules()
        if isinstance(m, kind)
    ]
    device = next(model.parameters()).device
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for x, _ in probe:
                model(x.to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return seen


def _shares(seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]]) -> dict[str, float]:
    """The silent share by the task's rule, and by the counting mistakes the check recognises."""

    def share(per_layer: list[tuple[int, int]]) -> float:
        return sum(s for s, _ in per_layer) / max(sum(n for _, n in per_layer), 1)

    def combined(pick: Callable[[list], list]) -> list[tuple[int, int]]:
        out = []
        for batches in seen.values():
            largest = torch.stack([m for m, _ in pick(batches)]).amax(0)
            out.append((int((largest <= 0).sum()), len(largest)))
        return out

    task = combined(lambda b: b)
    on_output = [
        (int(torch.stack([z for _, z in b]).all(0).sum()), len(b[0][1])) for b in seen.values()
    ]
    return {
        "task": share(task),
        "layer mean": sum(s / n for s, n in task) / max(len(task), 1),
        "output": share(on_output),
        "first batch": share(combined(lambda b: b[:1])),
        "last batch": share(combined(lambda b: b[-1:])),
    }


def _rerun_silent_share(
    activation: str,
    seed: int,
    train_data: FashionMNISTTensors,
    probe: Iterable,
    lr: float,
    device: str | torch.device,
) -> float:
    """The task's protocol for one run: its share of silent units over all activation layers."""
    return _rerun_shares(activation, seed, train_data, probe, lr, device)["task"]


def _rerun_shares(
    activation: str,
    seed: int,
    train_data: FashionMNISTTensors,
    probe: Iterable,
    lr: float,
    device: str | torch.device,
) -> dict[str, float]:
    """One run trained by the task's protocol; its silent share, and the shares that the
    recognised counting mistakes would give (see :func:`_shares`)."""
    with torch.random.fork_rng(devices=[]):
        seed_everything(seed)
        model = FashionCNN(activation=activation).to(device)
        batches = TensorLoader(train_data, 64, shuffle=True, seed=seed, device=device)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        fit(model, batches, None, TASK_EPOCHS, optimizer, progress=False)
    return _shares(_silent_counts(model, probe, ACTIVATIONS[activation]))


_MISTAKES = {  # a share the check recomputes: the mistake it names
    "output": "your shares match counting on the activation's *output* (== 0): LeakyReLU's output "
    "is never exactly 0, so its share comes out as 0. Fix silent_per_layer (Task 3.3) to count "
    "on the input (<= 0), then recompute the shares.",
    "first batch": "your shares match the first batch of val_loader only: silent_per_layer "
    "(Task 3.3) must combine every batch (a unit is silent only if it never fired on any). Fix "
    "it, then recompute the shares.",
    "last batch": "your shares match the last batch of val_loader only: silent_per_layer (Task "
    "3.3) must combine every batch, keeping each unit's largest input over all of them. Fix it, "
    "then recompute the shares.",
    "layer mean": "your shares match the mean of the per-layer shares; the task's share is all "
    "silent units over all units of all activation layers: sum the counts first, then divide.",
}


def _explain_shares(
    rerun: dict[tuple[str, int], dict[str, float]], tolerance: float
) -> Callable[[Mapping[tuple[str, int], float], Mapping[tuple[str, int], float]], str | None]:
    """The learner's earlier task or bookkeeping, before the protocol: which recognised mistake
    every differing share matches."""

    def explain(
        reported: Mapping[tuple[str, int], float], again: Mapping[tuple[str, int], float]
    ) -> str | None:
        wrong = [r for r in again if not abs(again[r] - reported[r]) <= tolerance]
        for mistake, hint in _MISTAKES.items():
            if all(abs(rerun[r][mistake] - reported[r]) <= 1e-3 for r in wrong):
                return hint
        other = dict(zip(EXPERIMENT_ARMS, reversed(EXPERIMENT_ARMS), strict=True))
        if all((other[a], s) in again for a, s in wrong) and all(
            abs(again[other[a], s] - reported[a, s]) <= tolerance for a, s in wrong
        ):
            return (
                "the arms are swapped: the shares under 'relu' are those of the LeakyReLU "
                "runs. Store each share under the activation it was trained with."
            )
        return None

    return explain


def check_silent_experiment(
    shares: Mapping[str, Mapping[int, float]],
    verdict: str,
    train_data: FashionMNISTTensors,
    probe: Iterable,
    lr: float,
    device: str | torch.device = "cpu",
) -> None:
    """Exercise 3.4: does a 10× learning rate silence more ReLU units than LeakyReLU units?

    ``shares`` is ``{"relu": {seed: share}, "leaky_relu": {seed: share}}`` (2 seeds or more,
    the same for both): the share of silent units over all activation layers of each run,
    trained by the task's protocol at :data:`TASK_LR`. ``verdict`` is one of
    ``EXPERIMENT_VERDICTS``, as the noise rule decides. ``lr``, ``train_data`` and ``probe``
    must be the task's (``LARGE_LR``, ``train_small``, ``val_loader``); the check trains on its
    own copy of the task's data. Every run is retrained (about a second each) and its share
    recounted; a share that differs is first compared with the recognised counting mistakes
    of Task 3.3 and with swapped arms, so that the hint names the mistake.

    Raises:
        AssertionError: with a hint.
    """
    ex = "3.4"
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isclose(lr, TASK_LR):
        raise failure(
            ex,
            f"lr={lr!r}, but the task's large learning rate is 10 × 1e-3 = {TASK_LR:g}",
            "set LARGE_LR = 10 * LR (LR = 1e-3), train every run with it and pass it as lr.",
        )
    train, val = _task_data()
    if not same_data(train_data, train):
        n = len(getattr(train_data, "labels", ()))
        raise failure(
            ex,
            f"train_data ({n:,} images) is not the task's train_small ({len(train):,} images)",
            "train every run on train_small (splits['train'].random_subset(2000, seed=0), as "
            "the setup cell makes it) and pass it as train_data.",
        )
    if hasattr(probe, "images") and not same_data(probe, val):
        raise failure(
            ex,
            "probe is not val_loader: its images are not the task's val_small",
            "count the silent units on val_loader (the 1,000 images of val_small) and pass it "
            "as probe.",
        )
    on = torch.device(device)
    task_probe = TensorLoader(val, 500, device=on)
    details: dict[tuple[str, int], dict[str, float]] = {}

    def recompute(arm: str, seed: int) -> float:
        details[arm, seed] = _rerun_shares(arm, seed, train, task_probe, TASK_LR, on)
        return details[arm, seed]["task"]

    tolerance = 0.02
    explain = _explain_shares(details, tolerance)
    reported_runs_verdict(
        ex,
        shares,
        verdict,
        arms=EXPERIMENT_ARMS,
        verdicts=EXPERIMENT_VERDICTS,
        recompute=recompute,
        tolerance=tolerance,
        what="silent share",
        value_range=(0.0, 1.0),
        range_hint="a share is silent units / all units, between 0 and 1: divide the count "
        "of silent units by the number of units of all activation layers.",
        rerun="all",
        explain=explain,
        protocol=_PROTOCOL,
    )
    passed(
        ex,
        "the shares come from real runs (a rerun of one of them agrees), and the verdict "
        "follows the noise rule",
    )
