"""What every chapter's checks share: the ✅/❌ lines, calling the learner's code, comparing with a
reference, refusing the shortcuts a task asks the learner to write, seeded fixtures, and the
experiment tasks' report check."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any
from unittest import mock

import torch
from torch import nn

from ..models import FashionCNN


def passed(exercise: str, what: str) -> None:
    """Print the ✅ line of a check that passed."""
    print(f"✅ Exercise {exercise}: {what}")


def failure(exercise: str, problem: str, hint: str) -> AssertionError:
    """Print the ❌ line and return the error to raise (``raise failure(...)``)."""
    print(f"❌ Exercise {exercise}: {problem}")
    return AssertionError(f"Exercise {exercise}: {problem}\nHint: {hint}")


def ensure(ex: str, *checks: tuple[object, str, str]) -> None:
    """Raise the ❌ of the first ``(ok, problem, hint)`` that is not ``ok``."""
    for ok, problem, hint in checks:
        if not ok:
            raise failure(ex, problem, hint)


def first_hint(*cases: tuple[object, str]) -> str:
    """The hint of the first ``(condition, hint)`` whose condition holds."""
    return next(hint for holds, hint in cases if holds)


def raise_first(ex: str, *cases: tuple[object, str, str]) -> None:
    """Raise the ❌ of the first ``(wrong, problem, hint)`` whose ``wrong`` is true."""
    for wrong, problem, hint in cases:
        if wrong:
            raise failure(ex, problem, hint)


def call(exercise: str, what: str, fn: Callable[..., Any], *args: Any, hint: str, **kwargs: Any):
    """``fn(*args, **kwargs)``, a crash turned into a ❌ naming ``what``; ``NotImplementedError``
    (a blank) and ``AssertionError`` (a failing inner check, a refused shortcut) pass through."""
    try:
        return fn(*args, **kwargs)
    except (NotImplementedError, AssertionError):
        raise
    except Exception as err:
        raise failure(exercise, f"{what} raised {type(err).__name__}: {err}", hint) from err


def expect_close(
    exercise: str, what: str, got: Any, want: Any, hint: str | Callable[[], str], **tolerances: Any
) -> None:
    """``torch.testing.assert_close(got, want, **tolerances)``, a mismatch (NaN included) turned
    into a ❌ ``what: greatest absolute difference …``; ``hint`` may be a function, called then."""
    try:
        torch.testing.assert_close(got, want, **tolerances)
    except NotImplementedError:
        raise
    except Exception as err:
        lines = [line for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        detail = next((ln for ln in lines if ln.startswith("Greatest absolute")), lines[0])
        raise failure(exercise, f"{what}: {detail}", hint() if callable(hint) else hint) from err


class ShortcutRefused(AssertionError):
    """A task's check ran code that called a library function the task asks you to write."""


@contextmanager
def refuse(exercise: str, shortcuts: Sequence[tuple[object, str]], task: str) -> Iterator[None]:
    """Inside the block, each ``(owner, name)`` of ``shortcuts`` (e.g. ``(F, "dropout")``)
    raises :class:`ShortcutRefused` saying "write ``task`` yourself"; all is restored after."""

    def stand_in(label: str) -> Callable[..., Any]:
        def refused(*_args: Any, **_kwargs: Any) -> Any:
            hint = (
                f"this task asks you to write {task} yourself; {label} is switched off "
                "while the check runs. Use plain tensor operations."
            )
            raise ShortcutRefused(*failure(exercise, f"your code called {label}", hint).args)

        return refused

    with ExitStack() as stack:
        for owner, name in shortcuts:
            label = f"{getattr(owner, '__name__', type(owner).__name__)}.{name}"
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
    """Whether ``given`` (a ``FashionMNISTTensors`` or ``TensorLoader``, any device) holds the
    images and labels of the split ``task``."""
    images, labels = getattr(given, "images", None), getattr(given, "labels", None)
    return (
        isinstance(images, torch.Tensor)
        and isinstance(labels, torch.Tensor)
        and torch.equal(images.cpu(), task.images)  # False for another shape
        and torch.equal(labels.cpu(), task.labels)
    )


class _Namespace:
    """A module's globals as an object, so that ``mock.patch.object`` can patch a name in it."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        object.__setattr__(self, "__dict__", namespace)


def aliases(
    functions: Sequence[Callable[..., Any]], shortcuts: Sequence[tuple[object, str]]
) -> list[tuple[object, str]]:
    """The ``(namespace, name)`` pairs, in the globals of ``functions`` (and of the methods of
    classes among them), bound to one of ``shortcuts`` (``from torch.nn.functional import
    dropout as drop``), to pass to :func:`refuse` as well."""
    targets = {id(getattr(owner, name)) for owner, name in shortcuts if hasattr(owner, name)}
    namespaces: dict[int, dict[str, Any]] = {}
    for fn in functions:
        for member in vars(fn).values() if isinstance(fn, type) else [fn]:
            namespace = getattr(getattr(member, "__func__", member), "__globals__", None)
            if isinstance(namespace, dict):
                namespaces[id(namespace)] = namespace
    return [
        (_Namespace(namespace), name)
        for namespace in namespaces.values()
        for name, value in list(namespace.items())
        if id(value) in targets
    ]


#: The checks' own source of chance, seeded by the operating system: no seed the learner sets and
#: no reported value decides which run is checked.
_PICKER = random.Random()


def choose(options: Sequence[Any]) -> Any:
    """One of ``options``, chosen by the checks' own random generator (never the learner's)."""
    return options[_PICKER.randrange(len(options))]


Run = tuple[str, int]
"""One run of an experiment task: ``(arm, seed)``."""


def _report_values(
    ex: str, reported: Any, arms: tuple[str, str], what: str, min_seeds: int, bounds: Any, hint: str
) -> dict[Run, float]:
    """The runs of a ``{arm: {seed: value}}`` report, or a ❌ naming what is malformed."""
    shape = (
        f"report a dict {{arm: {{seed: {what}}}}} with the arms {list(arms)}, the same "
        f"{min_seeds} or more integer seeds for each, and one float per run."
    )
    if not isinstance(reported, Mapping) or set(reported) != set(arms):
        mapping = isinstance(reported, Mapping)
        shown = ", ".join(sorted(map(repr, reported))) if mapping else type(reported).__name__
        raise failure(ex, f"reported {shown}, expected the arms {list(arms)}", shape)
    values: dict[Run, float] = {}
    for arm in arms:
        runs = reported[arm]
        if not isinstance(runs, Mapping) or len(runs) < min_seeds:
            n = len(runs) if isinstance(runs, Mapping) else type(runs).__name__
            problem = f"{arm}: {n} run(s) reported, need {min_seeds} seeds or more"
            raise failure(ex, problem, "one seed says nothing about the spread: " + shape)
        for seed, value in runs.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            low, high = bounds or (-math.inf, math.inf)
            where, problem, why = f"{arm}, seed {seed}: {value!r}", None, shape
            if isinstance(seed, bool) or not isinstance(seed, int):
                problem = f"{arm}: the seed {seed!r} is not an int"
            elif isinstance(value, bool) or not isinstance(value, int | float):
                problem = f"{where} is not a number"
            elif not math.isfinite(value):
                problem = f"{where} is not finite"
            elif not low <= value <= high:
                problem = f"{where} is outside [{low:g}, {high:g}], the range of a {what}"
                why = hint or shape
            if problem:
                raise failure(ex, problem, why)
            values[arm, seed] = float(value)
    seeds = [sorted(reported[arm]) for arm in arms]
    if seeds[0] != seeds[1]:
        problem = f"the arms have different seeds: {seeds[0]} vs {seeds[1]}"
        raise failure(ex, problem, "run every arm with the same seeds: change one thing only.")
    return values


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
    """Check an experiment task's report ``{arm: {seed: value}}`` and its verdict, in order:
    structure and ``value_range``; the verdict (``verdicts[0]``/``[1]`` when the first/second arm
    is higher beyond noise by ``experiments.compare``, else ``verdicts[2]``); ``verify_run`` on
    one run; ``recompute`` of every run (``rerun="all"``) or one the check chooses, within
    ``tolerance`` (``explain(reported, recomputed)`` may name the mistake). Returns the
    comparison's sentence (machine-dependent: keep it off a ✅ line)."""
    import pandas as pd

    from ..experiments import compare

    values = _report_values(ex, reported, arms, what, min_seeds, value_range, range_hint)
    frame = pd.DataFrame([{"variant": a, "seed": s, "value": v} for (a, s), v in values.items()])
    comparison = call(
        ex, "comparing the two arms", compare, frame, *arms, "value", hint="see above."
    )
    expected = verdicts[2 if not comparison.beyond_noise else 0 if comparison.diff > 0 else 1]
    said = verdict.strip().lower() if isinstance(verdict, str) else verdict
    if said not in [v.lower() for v in verdicts]:
        hint = "set verdict to one of the three strings, chosen by code from the numbers."
        raise failure(ex, f"verdict {verdict!r} is not one of {list(verdicts)}", hint)
    numbers = comparison.sentence(lambda v: f"{v:.3f}")
    if said != expected.lower():
        if expected == verdicts[2]:
            why = "is within noise, not resolved with these seeds (beyond_noise is False)"
        elif said == verdicts[2].lower():
            why = "is beyond seed noise (beyond_noise is True)"
        else:
            diff = f"diff is {comparison.diff:+.4f}, {arms[0]} − {arms[1]}"
            why = f"is beyond seed noise, but in the other direction ({diff})"
        hint = (
            f"by the chapter's rule (experiments.compare) the difference {why}: the verdict is "
            f"{expected!r}. Choose it by code from beyond_noise and diff, not from the means."
        )
        raise failure(ex, f"verdict {verdict!r}, expected {expected!r} ({numbers})", hint)
    runs = sorted(values)
    if verify_run is not None:
        verify_run(*choose(runs))
    chosen = runs if rerun == "all" else [choose(runs)]
    again = {run: float(recompute(*run)) for run in chosen}
    wrong = [run for run in chosen if not abs(again[run] - values[run]) <= tolerance]
    if wrong:
        (arm, seed), run = wrong[0], wrong[0]
        more = f" ({len(wrong) - 1} more run(s) differ too)" if len(wrong) > 1 else ""
        hint = (explain(values, again) if explain is not None else None) or (
            f"report the numbers of your runs: for {arm} seed {seed} the check measured "
            f"{again[run]:.4f} (tolerance {tolerance:g}) by {protocol}; you reported "
            f"{values[run]:.4f}."
        )
        problem = f"{arm}, seed {seed}: reported {values[run]:.4f}, a rerun gave {again[run]:.4f}"
        raise failure(ex, problem + more, hint)
    shown = "; ".join(f"{a} seed {s}: {v:.4f}" for (a, s), v in again.items())
    return f"{numbers}; rerun of {shown}"
