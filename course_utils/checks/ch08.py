"""Checks of the chapter 8 exercises: a traced file, an export with its parity test, and exported
control flow."""

from __future__ import annotations

import copy
import math
import tempfile
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import torch
from torch import nn

from .. import export as course_export
from ..data import MEAN, STD
from ..export import InvertIfBright, export_model
from ._common import (
    ShortcutRefused,
    aliases,
    call,
    expect_close,
    failure,
    fixed_batch,
    passed,
    refuse,
    seeded_cnn,
)

__all__ = ["check_cond_export", "check_export_and_parity", "check_traced_file"]

_DYNAMIC = "declare the batch dimension dynamic: dynamic_shapes={'x': {0: torch.export.Dim(...)}}"


def _images(n: int, seed: int) -> torch.Tensor:
    """``n`` test-like images, normalised like Fashion-MNIST."""
    return (fixed_batch(n, seed) - MEAN) / STD


def _attempt(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(...)``, or the exception it raised (a blank or a refused shortcut is re-raised)."""
    try:
        return fn(*args, **kwargs)
    except (NotImplementedError, ShortcutRefused):
        raise
    except Exception as err:  # torch's guards raise AssertionError
        return err


def _matches(ex: str, run: Callable, want: Callable, cases: dict, what: str, crash: str, hint, tol):
    """``run(x)`` is ``want(x)`` within ``tol`` for each ``{name: x}`` of ``cases``; a crash, a
    wrong shape or a difference (``hint(name, x)`` names the mistake) is a ❌."""
    for name, x in cases.items():
        with torch.no_grad():
            got, expected = _attempt(run, x), want(x)
        if isinstance(got, Exception):
            problem = f"{what} failed on a {name} batch of {len(x)} ({type(got).__name__})"
            raise failure(ex, problem, crash) from got
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
            shown = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            problem = f"{what} returned {shown} for a {name} batch of {len(x)}"
            raise failure(ex, problem, "save the classifier itself: it returns [N, 10] logits.")
        problem = f"on a {name} batch of {len(x)}, {what} differs from the reference"
        expect_close(ex, problem, got, expected, partial(hint, name, x), atol=tol, rtol=0)


def _in_eval(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` in eval mode, on CPU tensors."""
    device = next(model.parameters()).device
    return lambda x: model.eval()(x.to(device)).cpu()


def _eval_mode_hint(run: Callable, what: str, *_: Any) -> str:
    """Why ``run`` looks made in training mode (dropout: a new answer at every call; BatchNorm:
    an image's logits depend on its batch), or else that it holds other weights."""
    x, train = _images(9, 87), "in training mode. Call model.eval() first."
    with torch.no_grad():
        first, again, alone = run(x), run(x), run(x[:4])
    if not (first.isfinite().all() and alone.isfinite().all()):
        return f"the {what} gives NaN or infinite logits: save the trained model, in eval mode."
    if not torch.allclose(first, again, atol=1e-6):
        return f"the {what} varies from call to call: dropout was recorded {train}"
    if not torch.allclose(first[:4], alone, atol=1e-4):
        return f"the {what}'s logits depend on the batch: BatchNorm was recorded {train}"
    return "save the model you were given (its trained weights) in eval mode, not another."


# --- 8.1 ---------------------------------------------------------------------------------------


def check_traced_file(path: Any, model: nn.Module, tol: float = 1e-5) -> None:
    """Exercise 8.1: ``path`` is a TorchScript file whose outputs match ``model`` in eval mode."""
    ex = "8.1"
    if path is None:
        raise failure(ex, "path is None", "save the traced model (traced.save(path)) and set path.")
    path = Path(path)
    if not path.is_file():
        raise failure(ex, f"there is no file {path.name!r}", "call traced.save(path) first.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = _attempt(torch.jit.load, str(path), "cpu")
    if isinstance(loaded, Exception):
        hint = "write it with traced.save(path) or torch.jit.save(traced, path)."
        if not isinstance(_attempt(torch.load, path, weights_only=True), Exception):
            hint = "this file was written by torch.save: it needs the model's class. " + hint
        problem = f"torch.jit.load cannot read {path.name} ({type(loaded).__name__})"
        raise failure(ex, problem, hint) from loaded
    was_training = model.training
    try:
        crash = "trace the classifier itself with an example batch: torch.jit.trace(model, x[:4])."
        cases = {"test-like": _images(4, 81), "larger": _images(9, 82)}
        hint = partial(_eval_mode_hint, loaded, "traced file")
        _matches(ex, loaded, _in_eval(model), cases, "the traced file", crash, hint, tol)
    finally:
        model.train(was_training)
    passed(
        ex,
        f"{path.name} loads with torch.jit.load, no model class needed, and matches the model "
        f"(with its dropout and BatchNorm in eval mode) within {tol:g} on batches of 4 and 9",
    )


# --- 8.2 ---------------------------------------------------------------------------------------

_FAULTS = {  # planted fault: (batch sizes it hits, {logit: change} in the last row)
    "one logit 0.01 too high in the last row": (lambda n: n > 1, {3: 0.01}),
    "one logit 0.01 too low in the last row": (lambda n: n > 1, {7: -0.01}),
    "one logit 0.01 too low on a batch of one image": (lambda n: n == 1, {2: -0.01}),
    "two logits of the last row 0.01 off": (lambda n: n > 1, {1: 0.01, 8: -0.01}),
}
_HIGH, _LOW, _ONE, _ = _FAULTS


class _Planted(nn.Module):
    """``inner`` with ``changes`` made to the last row on the batch sizes ``hits`` picks (with
    ``changes=None``, it refuses them as a fixed-batch export does); it records the sizes."""

    def __init__(self, inner: nn.Module, hits=lambda n: False, changes: dict | None = None):
        super().__init__()
        self.inner, self.hits, self.changes, self.seen = inner, hits, changes, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(n := len(x))
        if self.hits(n) and self.changes is None:
            raise AssertionError("Guard failed: x.size()[0] == 8")  # what torch.export raises
        out = self.inner(x).clone()
        for logit, change in (self.changes or {}).items() if self.hits(n) else ():
            out[-1, logit] += change
        return out


def _parity_hint(found: dict[str, float]) -> str:
    """The likely mistake of a parity function, from what it reported for the planted faults."""
    caught = {fault: value >= 0.0099 for fault, value in found.items()}
    rules = [  # (the pattern seen, its hint), first match wins
        (any(v > 0.0101 for v in found.values()), "return .abs().max(), not a sum or a norm."),
        (
            any(0 < v < 0.0099 for v in found.values()),
            "return .abs().max(), not a mean: it dilutes one bad logit.",
        ),
        (caught[_HIGH] != caught[_LOW], "take the absolute value before the max: .abs().max()."),
        (caught[_ONE] and not caught[_HIGH], "compare every row of every batch, not one row."),
        (not any(caught.values()), "compare the logits themselves, not classes or rounded values."),
        (True, "compare every row of every batch, the batch of one image included."),
    ]
    return next(hint for seen, hint in rules if seen)


def _check_parity(ex: str, parity: Callable[..., Any], reference: nn.Module) -> None:
    sizes, exact, hint = (1, 3, 17), _Planted(reference), "return the largest |difference|."
    result = call(
        ex, "parity(reference, copy, (1, 3, 17))", parity, reference, exact, sizes, hint=hint
    )
    if isinstance(result, bool) or not isinstance(result, int | float):
        raise failure(ex, f"parity returned {type(result).__name__}", "return float(difference).")
    if not math.isfinite(result) or result > 1e-6:
        problem = f"parity reported {result!r} for an exact copy of the reference"
        raise failure(ex, problem, "feed the same input to both: make x once per batch size.")
    if missing := sorted(set(sizes) - set(exact.seen)):
        problem = f"parity(..., batch_sizes={sizes}) never ran a batch of {missing[0]}"
        raise failure(ex, problem, "loop over batch_sizes: torch.randn(n, 1, 28, 28) for each n.")
    found = {}
    for fault, planted in _FAULTS.items():
        candidate, hint = _Planted(reference, *planted), "return the difference, do not crash."
        value = call(ex, f"parity on {fault}", parity, reference, candidate, sizes, hint=hint)
        found[fault] = float(value) if isinstance(value, int | float) else math.nan
    if missed := [fault for fault, value in found.items() if not 0.0099 <= value <= 0.0101]:
        problem = f"parity reported {found[missed[0]]!r} for {missed[0]} (expected 0.01)"
        raise failure(ex, problem, _parity_hint(found))
    refused = _attempt(parity, reference, _Planted(reference, lambda n: n != 8), sizes)
    number = isinstance(refused, int | float) and not refused <= 1e-3  # NaN, inf: reported
    if not (number or isinstance(refused, Exception)):
        problem = f"parity reported {refused!r} for a program that refuses every batch size but 8"
        raise failure(ex, problem, "do not swallow the error: let the exception propagate.")


def _settled_model(seed: int) -> nn.Module:
    """A small CNN with dropout and BatchNorm (non-default running statistics), in training mode."""
    model = seeded_cnn(seed, width=4, hidden=16, norm="batch", dropout=0.5)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        for s in range(5):
            model(_images(32, 300 + s) * 1.5 + 0.3)
    return model.train()


def _export_and_check(ex: str, export_and_check: Callable, model: nn.Module, path: Path, tol):
    """``export_and_check(model, path)``: a file that matches ``model`` and a number ≤ ``tol``."""
    expected = _in_eval(copy.deepcopy(model))
    reported = _attempt(export_and_check, model, path)
    if isinstance(reported, Exception):
        message, name = str(reported), type(reported).__name__
        hint = (
            f"the program accepts only the example's batch size: {_DYNAMIC}."
            if "Guard failed" in message and ".size()[0]" in message
            else "the model is still in training mode: call model.eval() before exporting."
            if "training" in message
            else "export with torch.export.export, save and load with torch.export.save/load."
        )
        line = (message.strip().splitlines() or [""])[0][:120]
        raise failure(ex, f"export_and_check(model, path) raised {name}: {line}", hint)
    if not path.is_file():
        raise failure(ex, "export_and_check wrote no file at path", "torch.export.save it.")
    loaded = _attempt(torch.export.load, path)
    if isinstance(loaded, Exception):
        problem = f"torch.export.load cannot read the file ({type(loaded).__name__})"
        raise failure(
            ex, problem, "write it with torch.export.save(program, path), not torch.save."
        )
    program, crash = loaded.module(), f"{_DYNAMIC}; else it accepts only the example's batch size."
    cases = {"test-like": _images(2, 83), "larger": _images(5, 84), "large": _images(33, 85)}
    hint = partial(_eval_mode_hint, program, "saved program")
    _matches(ex, program, expected, cases, "the saved program", crash, hint, tol)
    if isinstance(reported, bool) or not isinstance(reported, int | float):
        problem = f"export_and_check returned {type(reported).__name__}, not a float"
        raise failure(ex, problem, "return what parity(model, loaded.module()) returns.")
    if not 0 <= reported <= tol:
        problem = f"export_and_check returned {reported!r}, but the file matches within {tol:g}"
        raise failure(ex, problem, "compare the model with the program loaded from the file.")


def _check_tests_the_file(ex: str, export_and_check: Callable) -> None:
    """Run again with ``torch.export.load`` handing back a program off by 0.01: it must show."""
    original = torch.export.load

    def planted_load(*args: Any, **kwargs: Any) -> SimpleNamespace:
        module = original(*args, **kwargs).module()
        return SimpleNamespace(module=lambda: _Planted(module, lambda n: True, {3: 0.01}))

    loads = [(torch.export, "load"), *aliases([export_and_check], [(torch.export, "load")])]
    with tempfile.TemporaryDirectory() as folder, ExitStack() as stack:
        for owner, name in loads:
            stack.enter_context(mock.patch.object(owner, name, planted_load))
        again = _attempt(export_and_check, _settled_model(83), Path(folder) / "model.pt2")
    again = again.item() if isinstance(again, torch.Tensor) and again.numel() == 1 else again
    caught = isinstance(again, int | float) and not isinstance(again, bool) and again >= 0.0099
    if caught or isinstance(again, Exception):
        return  # raising on the broken file reports it too
    problem = f"export_and_check returned {again!r} when its file was off by 0.01 in one logit"
    hint = "test the file: return parity(model, torch.export.load(path).module()), not the model."
    raise failure(ex, problem, hint)


def check_export_and_parity(
    export_and_check: Callable[[nn.Module, Path], Any],
    parity: Callable[..., Any],
    tol: float = 1e-5,
) -> None:
    """Exercise 8.2: ``parity`` catches programs off by 0.01 (or refusing a batch size), and
    ``export_and_check(model, path)`` writes a ``.pt2`` with a dynamic batch that matches the
    model in eval mode, returning the parity of the file it loaded back."""
    ex = "8.2"
    names = ("export_model", "save_exported", "load_exported", "max_abs_diff")
    shortcuts = [(course_export, name) for name in names]
    shortcuts += aliases([export_and_check, parity], shortcuts)
    with refuse(ex, shortcuts, task="the export and its parity test"):
        _check_parity(ex, parity, _settled_model(81).eval())
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.pt2"
            _export_and_check(ex, export_and_check, _settled_model(82), path, tol)
        _check_tests_the_file(ex, export_and_check)
    passed(
        ex,
        "parity catches programs off by 0.01 in one logit and one that refuses a batch size; "
        "export_and_check's .pt2 loads with torch.export.load, runs batches of 2, 5 and 33, and "
        f"matches the model (dropout and BatchNorm in eval mode) within {tol:g}",
    )


# --- 8.3 ---------------------------------------------------------------------------------------

_COND = (
    "choose with torch.cond(x.mean() > self.threshold, lambda t: 1 - t, lambda t: t.clone(), (x,))"
)


def _exported(ex: str, module_cls: Callable, classifier: nn.Module, **kwargs: Any) -> nn.Module:
    """``module_cls(classifier, **kwargs)`` exported; a crash or no ``cond`` in it is a ❌."""
    hint = "its __init__ takes the classifier and a threshold: subclass InvertIfBright."
    wrapper = call(ex, "building the module", module_cls, classifier, hint=hint, **kwargs)
    if not isinstance(wrapper, nn.Module):
        raise failure(ex, "the module is not an nn.Module", "subclass InvertIfBright.")
    program = _attempt(export_model, wrapper.eval(), fixed_batch(4, 83))
    if isinstance(program, Exception):
        if "data-dependent" in str(program) or "DataDependent" in type(program).__name__:
            hint = f"a Python `if` on a tensor's value cannot be exported: {_COND}."
        else:
            hint = "each branch of torch.cond must return a tensor of x's shape (t.clone())."
        raise failure(ex, f"torch.export failed ({type(program).__name__})", hint) from program
    code = program.graph_module.code  # the graph as Python: torch.ops.higher_order.cond(...)
    if "higher_order.cond" not in code:
        hint = (
            "torch.where computes both branches for every pixel; torch.cond runs one."
            if "aten.where" in code
            else f"the graph computes both branches, with no cond: {_COND}."
        )
        raise failure(ex, "the exported graph holds no torch.cond (no `cond` node)", hint)
    return program.module()


_WHY = {  # a batch's name: the hint when the program did the wrong thing with it
    "mixed": "decide once, for the whole batch, with x.mean() > self.threshold",
    "threshold": "compare with self.threshold, not a number typed in",
    "": "invert when x.mean() > self.threshold: torch.cond runs true_fn when pred is True",
}


def _branch_hint(module: Callable, classifier: nn.Module, name: str, x: torch.Tensor) -> str:
    """What the program did with the batch ``x``, and what it should have done."""
    with torch.no_grad():
        got = module(x)
        outcomes = {  # what the program may have done with x
            "kept": classifier((x - MEAN) / STD),
            "inverted": classifier((1.0 - x - MEAN) / STD),
            "kept, not normalised": classifier(x),
            "inverted, not normalised": classifier(1.0 - x),
        }
    same = [k for k, v in outcomes.items() if got.shape == v.shape and got.allclose(v, atol=1e-4)]
    did = same[0] if same else "neither kept nor inverted"
    if did.endswith("not normalised"):
        return "normalise after choosing the branch: (x - self.mean) / self.std."
    why = next(why for key, why in _WHY.items() if name.startswith(key))
    return f"the program {did} a {name} batch: {why}."


def check_cond_export(module_cls: Callable[[nn.Module], nn.Module], tol: float = 1e-5) -> None:
    """Exercise 8.3: ``module_cls(classifier)`` exports with a ``torch.cond`` in its graph and
    matches ``InvertIfBright`` on dark, bright and mixed batches, and with ``threshold=0.2``."""
    ex = "8.3"
    classifier = seeded_cnn(8, width=4, hidden=16).eval()
    dark, bright = fixed_batch(4, 89), fixed_batch(4, 88, bright=True)
    cases = {  # a mixed batch tells one decision per batch from one per image, or by one image
        0.5: {
            "dark": fixed_batch(4, 84),
            "bright": fixed_batch(7, 86, bright=True),
            "mixed, mostly bright, first image dark": torch.cat([fixed_batch(1, 87), bright]),
            "mixed, mostly dark, last image bright": torch.cat([dark, fixed_batch(1, 90, True)]),
        },
        0.2: {"threshold 0.2, mean 0.35": fixed_batch(4, 91) + 0.2},
    }
    for threshold, batches in cases.items():
        kwargs = {} if threshold == 0.5 else {"threshold": threshold}
        module = _exported(ex, module_cls, classifier, **kwargs)
        reference = InvertIfBright(classifier, threshold).eval()
        crash, hint = (
            f"{_COND}: both branches return x's shape.",
            partial(_branch_hint, module, classifier),
        )
        _matches(ex, module, reference, batches, "the exported program", crash, hint, tol)
    passed(
        ex,
        "the module exports with torch.export and keeps both branches: it matches "
        f"InvertIfBright on dark and bright batches within {tol:g}",
    )
