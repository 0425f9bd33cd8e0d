"""What every chapter's checks share: the ✅/❌ lines, calling the learner's code, refusing the
shortcuts a task asks the learner to write themselves, and seeded fixtures."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any
from unittest import mock

import torch
from torch import nn

from ..models import FashionCNN

__all__ = [
    "ShortcutRefused",
    "aliases",
    "build_model",
    "call",
    "choose",
    "failure",
    "fixed_batch",
    "passed",
    "refuse",
    "reported_runs_verdict",
    "same_data",
    "seeded_cnn",
    "small_model",
]


def passed(exercise: str, what: str) -> None:
    """Print the ✅ line of a check that passed."""
    print(f"✅ Exercise {exercise}: {what}")


def failure(exercise: str, problem: str, hint: str) -> AssertionError:
    """Print the ❌ line and return the error to raise (``raise failure(...)``)."""
    print(f"❌ Exercise {exercise}: {problem}")
    return AssertionError(f"Exercise {exercise}: {problem}\nHint: {hint}")


def call(exercise: str, what: str, fn: Callable[..., Any], *args: Any, hint: str, **kwargs: Any):
    """``fn(*args, **kwargs)``, with a crash turned into a ❌ that names ``what`` was called.

    ``NotImplementedError`` (an unfinished blank) and ``AssertionError`` (a check failing inside,
    or a refused shortcut) pass through unchanged.
    """
    try:
        return fn(*args, **kwargs)
    except (NotImplementedError, AssertionError):
        raise
    except Exception as err:
        raise failure(exercise, f"{what} raised {type(err).__name__}: {err}", hint) from err


class ShortcutRefused(AssertionError):
    """A task's check ran code that called a library function the task asks you to write."""


@contextmanager
def refuse(exercise: str, shortcuts: Sequence[tuple[object, str]], task: str) -> Iterator[None]:
    """Switch off library functions or classes while the learner's code runs inside the block.

    Each ``(owner, name)`` attribute (for example ``(torch.nn.functional, "dropout")``) is
    replaced by a stand-in that raises :class:`ShortcutRefused` with a friendly message, so that
    ``F.dropout(x, p, training)`` cannot pass a task that asks for dropout written by hand.
    Everything is restored when the block ends, also when it raises.

    Args:
        exercise: the exercise number, for the ❌ line.
        shortcuts: the attributes to switch off.
        task: what the task asks you to write, e.g. ``"dropout"``.
    """

    def stand_in(label: str) -> Callable[..., Any]:
        def refused(*_args: Any, **_kwargs: Any) -> Any:
            problem = f"your code called {label}"
            hint = (
                f"this task asks you to write {task} yourself; {label} is switched off "
                "while the check runs. Use plain tensor operations."
            )
            print(f"❌ Exercise {exercise}: {problem}")
            raise ShortcutRefused(f"Exercise {exercise}: {problem}\nHint: {hint}")

        return refused

    with ExitStack() as stack:
        for owner, name in shortcuts:
            owner_name = getattr(owner, "__name__", type(owner).__name__)
            label = f"{owner_name}.{name}"
            stack.enter_context(mock.patch.object(owner, name, stand_in(label)))
        yield


def small_model(seed: int = 0, **kwargs: Any) -> FashionCNN:
    """``FashionCNN(**kwargs)`` after ``torch.manual_seed(seed)`` (the global RNG moves on)."""
    torch.manual_seed(seed)
    return FashionCNN(**kwargs)


def seeded_cnn(seed: int, **kwargs: Any) -> FashionCNN:
    """``FashionCNN(**kwargs)`` built from ``seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return FashionCNN(**kwargs)


def fixed_batch(n: int, seed: int, bright: bool = False) -> torch.Tensor:
    """``n`` random 28×28 images with pixels in [0, 0.3] (dark) or [0.7, 1] (bright)."""
    x = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) * 0.3
    return 1 - x if bright else x


def build_model(ex: str, model_cls: Callable[..., nn.Module], **kwargs: Any) -> nn.Module:
    """``model_cls(**kwargs)`` with the RNG forked, turning a crash into a ❌ with a hint."""
    name = getattr(model_cls, "__name__", repr(model_cls))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = call(ex, f"{name}()", model_cls, hint="read the error above.", **kwargs)
    if not isinstance(model, nn.Module):
        raise failure(ex, f"{name}() is not an nn.Module", "subclass nn.Module.")
    return model


def same_data(given: Any, task: Any) -> bool:
    """Whether ``given`` holds the images and labels of the split ``task`` (a
    :class:`~course_utils.data.FashionMNISTTensors`; ``given`` may also be a ``TensorLoader``,
    on any device)."""
    images, labels = getattr(given, "images", None), getattr(given, "labels", None)
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        return False
    return (
        images.shape == task.images.shape
        and labels.shape == task.labels.shape
        and torch.equal(images.cpu(), task.images)
        and torch.equal(labels.cpu(), task.labels)
    )


class _Namespace:
    """A module's globals ``dict`` seen as an object, so that ``mock.patch.object`` can patch a
    name in it (``from torch.nn.functional import dropout`` binds ``dropout`` there)."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        object.__setattr__(self, "__dict__", namespace)


def aliases(
    functions: Sequence[Callable[..., Any]], shortcuts: Sequence[tuple[object, str]]
) -> list[tuple[object, str]]:
    """The names in the learner's modules that are bound to one of the ``shortcuts``.

    ``refuse`` patches ``torch.nn.functional.dropout``, but a notebook that ran ``from
    torch.nn.functional import dropout as drop`` still holds the original under ``drop``. This
    returns ``(namespace, "drop")`` pairs for every such name in the globals of ``functions``
    (and of the methods of classes among them), to pass to :func:`refuse` as well.
    """
    targets = {id(getattr(owner, name)) for owner, name in shortcuts if hasattr(owner, name)}
    namespaces: dict[int, dict[str, Any]] = {}
    for fn in functions:
        members = vars(fn).values() if isinstance(fn, type) else [fn]
        for member in members:
            namespace = getattr(getattr(member, "__func__", member), "__globals__", None)
            if isinstance(namespace, dict):
                namespaces[id(namespace)] = namespace
    found = []
    for namespace in namespaces.values():
        view = _Namespace(namespace)
        found += [(view, n) for n, v in list(namespace.items()) if id(v) in targets]
    return found


#: The checks' own source of chance, for the runs they rerun: seeded from the operating system
#: when the module is imported, so that no seed the learner sets (``seed_everything`` seeds
#: ``random``, NumPy and torch) and no reported value can decide which run is checked.
_PICKER = random.Random()


def choose(options: Sequence[Any]) -> Any:
    """One of ``options``, chosen by the checks' own random generator (never the learner's)."""
    return options[_PICKER.randrange(len(options))]


Run = tuple[str, int]
"""One run of an experiment task: ``(arm, seed)``."""


def reported_runs_verdict(
    ex: str,
    reported: Any,
    verdict: Any,
    *,
    arms: tuple[str, str],
    verdicts: tuple[str, str, str],
    recompute: Callable[[str, int], float],
    tolerance: float,
    what: str,
    min_seeds: int = 2,
    rerun: str = "one",
    value_range: tuple[float, float] | None = None,
    range_hint: str = "",
    verify_run: Callable[[str, int], None] | None = None,
    explain: Callable[[Mapping[Run, float], Mapping[Run, float]], str | None] | None = None,
    protocol: str = "the protocol the task states (same seed_everything, data order, optimiser "
    "and epochs)",
) -> str:
    """Check an experiment task: numbers from real runs, and a verdict that follows the noise rule.

    ``reported`` is ``{arm: {seed: value}}`` for the two ``arms``, with the same ``min_seeds`` or
    more integer seeds each. The verdict must be ``verdicts[0]`` when the first arm's value is
    higher beyond noise (:attr:`course_utils.experiments.Comparison.beyond_noise`),
    ``verdicts[1]`` when the second's is, and ``verdicts[2]`` otherwise (case and outer spaces
    ignored). Then runs are recomputed with ``recompute(arm, seed)`` and must agree within
    ``tolerance``: every run (``rerun="all"``), or one run chosen at random by the check
    (``rerun="one"``, from :func:`choose`: not from the reported values, so that a report cannot
    steer which run is checked). The cheap checks come first: structure, ``value_range``, the
    verdict, then ``verify_run(arm, seed)`` on a run chosen at random (for example the learner's
    own ``run``), then the (slow) reruns.

    Args:
        value_range: ``(low, high)`` that every value must lie in (a share, a difference of
            accuracies); a value outside it fails before any rerun, with ``range_hint``.
        explain: given the reported values and the recomputed ones (``{(arm, seed): value}``),
            the mistake that explains the difference (the learner's earlier task, a sign, swapped
            arms…) as a hint, or ``None``; asked before the hint falls back to saying what was
            measured and what was expected.
        protocol: how the check trains a run, for the fallback hint.

    Returns:
        the comparison's sentence (machine-dependent numbers: keep it off a ✅ line that
        strict nbval compares).
    """
    import math

    import pandas as pd

    from ..experiments import compare

    shape_hint = (
        f"report a dict {{arm: {{seed: {what}}}}} with the arms {list(arms)}, the same "
        f"{min_seeds} or more integer seeds for each, and one float per run."
    )
    if not isinstance(reported, Mapping) or set(reported) != set(arms):
        keys = sorted(map(repr, reported)) if isinstance(reported, Mapping) else None
        shown = ", ".join(keys) if keys is not None else type(reported).__name__
        raise failure(ex, f"reported {shown}, expected the arms {list(arms)}", shape_hint)
    rows = []
    for arm in arms:
        runs = reported[arm]
        if not isinstance(runs, Mapping) or len(runs) < min_seeds:
            n = len(runs) if isinstance(runs, Mapping) else type(runs).__name__
            raise failure(
                ex,
                f"{arm}: {n} run(s) reported, need {min_seeds} seeds or more",
                "one seed says nothing about the spread: " + shape_hint,
            )
        for seed, value in runs.items():
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise failure(ex, f"{arm}: the seed {seed!r} is not an int", shape_hint)
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise failure(ex, f"{arm}, seed {seed}: {value!r} is not a number", shape_hint)
            if not math.isfinite(value):
                raise failure(ex, f"{arm}, seed {seed}: {value} is not finite", shape_hint)
            if value_range is not None and not value_range[0] <= value <= value_range[1]:
                raise failure(
                    ex,
                    f"{arm}, seed {seed}: {value!r} is outside [{value_range[0]:g}, "
                    f"{value_range[1]:g}], the range of a {what}",
                    range_hint or shape_hint,
                )
            rows.append({"variant": arm, "seed": int(seed), "value": float(value)})
    seeds = [sorted(reported[arm]) for arm in arms]
    if seeds[0] != seeds[1]:
        raise failure(
            ex,
            f"the arms have different seeds: {seeds[0]} vs {seeds[1]}",
            "run every arm with the same seeds: a fair comparison changes one thing only.",
        )
    frame = pd.DataFrame(rows)
    comparison = call(
        ex,
        "comparing the two arms",
        compare,
        frame,
        arms[0],
        arms[1],
        "value",
        hint=shape_hint,
    )
    if comparison.beyond_noise:
        expected = verdicts[0] if comparison.diff > 0 else verdicts[1]
    else:
        expected = verdicts[2]
    said = verdict.strip().lower() if isinstance(verdict, str) else verdict
    if said not in [v.lower() for v in verdicts]:
        raise failure(
            ex,
            f"verdict {verdict!r} is not one of {list(verdicts)}",
            "set verdict to one of the three strings, chosen by code from the numbers.",
        )
    numbers = comparison.sentence(lambda v: f"{v:.3f}")
    if said != expected.lower():
        if expected == verdicts[2]:
            hint = (
                "by the chapter's rule (compare(...).beyond_noise is False for these numbers) "
                f"the difference is within noise, not resolved with these seeds: the verdict is "
                f"{expected!r}. Choose it by code from beyond_noise, not from the means alone."
            )
        elif said == verdicts[2].lower():
            hint = (
                "by the chapter's rule (compare(...).beyond_noise is True for these numbers) "
                f"the difference is beyond seed noise: the verdict is {expected!r}."
            )
        else:
            hint = (
                "the difference is beyond seed noise, but in the other direction: "
                f"compare(...).diff is {comparison.diff:+.4f} ({arms[0]} − {arms[1]}), so the "
                f"verdict is {expected!r}."
            )
        raise failure(ex, f"verdict {verdict!r}, expected {expected!r} ({numbers})", hint)
    values = {(r["variant"], r["seed"]): r["value"] for r in rows}
    runs = sorted(values)
    if verify_run is not None:
        verify_run(*choose(runs))
    chosen = runs if rerun == "all" else [choose(runs)]
    again = {run: float(recompute(*run)) for run in chosen}
    wrong = [run for run in chosen if not abs(again[run] - values[run]) <= tolerance]
    if wrong:
        arm, seed = wrong[0]
        more = f" ({len(wrong) - 1} more run(s) differ too)" if len(wrong) > 1 else ""
        hint = explain(values, again) if explain is not None else None
        if hint is None:
            hint = (
                f"report the numbers of your runs: for {arm} seed {seed} the check measured "
                f"{again[arm, seed]:.4f} (tolerance {tolerance:g}) by {protocol}; you reported "
                f"{values[arm, seed]:.4f}."
            )
        raise failure(
            ex,
            f"{arm}, seed {seed}: reported {values[arm, seed]:.4f}, a rerun gave "
            f"{again[arm, seed]:.4f}{more}",
            hint,
        )
    shown = "; ".join(f"{a} seed {s}: {v:.4f}" for (a, s), v in again.items())
    return f"{numbers}; rerun of {shown}"
