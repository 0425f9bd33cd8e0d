"""What every chapter's checks share: the ✅/❌ lines, calling the learner's code, refusing the
shortcuts a task asks the learner to write themselves, and seeded fixtures."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any
from unittest import mock

import torch
from torch import nn

from ..models import FashionCNN

__all__ = [
    "ShortcutRefused",
    "build_model",
    "call",
    "failure",
    "fixed_batch",
    "passed",
    "refuse",
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
