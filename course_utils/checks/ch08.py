"""Checks of the chapter 8 exercises: tracing, a dynamic-batch export, exported control flow."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._common import (
    failure,
    fixed_batch,
    passed,
    seeded_cnn,
)

__all__ = [
    "check_cond_export",
    "check_dynamic_export",
    "check_traced_file",
]


# --- 8.1 ---------------------------------------------------------------------------------------


def check_traced_file(path: Any, model: nn.Module, tol: float = 1e-5) -> None:
    """Exercise 8.1: ``path`` is a TorchScript file whose outputs match ``model`` (≤ ``tol``).

    The file is loaded with ``torch.jit.load`` (no model class needed) and run on fixed batches
    of 4 and 9 images; ``model`` runs in eval mode on the same batches.

    Raises:
        AssertionError: no file, not a TorchScript file, or outputs that differ, with a hint.
    """
    from pathlib import Path

    ex = "8.1"
    if path is None:
        raise failure(ex, "path is None", "save the traced model (traced.save(path)) and set path.")
    path = Path(path)
    if not path.is_file():
        raise failure(ex, f"there is no file {path.name!r}", "call traced.save(path) first.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            loaded = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:
        try:
            torch.load(path, weights_only=True)
            hint = (
                "this file was written by torch.save: a state_dict or pickled module needs the "
                "model's Python class to load. Save the traced module itself: traced.save(path)."
            )
        except Exception:
            hint = "write the file with traced.save(path) or torch.jit.save(traced, path)."
        raise failure(
            ex, f"torch.jit.load cannot read {path.name} ({type(err).__name__})", hint
        ) from err
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for n, seed in ((4, 81), (9, 82)):
                x = (fixed_batch(n, seed) - 0.2860) / 0.3530
                expected = model(x.to(device)).cpu()
                try:
                    got = loaded(x)
                except Exception as err:
                    raise failure(
                        ex,
                        f"the loaded model failed on a batch of {n} images [{n}, 1, 28, 28] "
                        f"({type(err).__name__})",
                        "trace the classifier itself with an example batch of images, "
                        "torch.jit.trace(model, x[:4]), and save what trace returns.",
                    ) from err
                if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
                    raise failure(
                        ex,
                        f"the loaded model returned {getattr(got, 'shape', type(got).__name__)} "
                        f"for a batch of {n}, expected {tuple(expected.shape)}",
                        "trace the classifier itself: torch.jit.trace(model, example_batch).",
                    )
                diff = float((got - expected).abs().max())
                if diff > tol:
                    again = float((loaded(x) - got).abs().max())
                    hint = (
                        "the file's outputs change from call to call: it was traced in training "
                        "mode, with dropout recorded. Call model.eval() before torch.jit.trace."
                        if again > 0
                        else "trace the model you were given (its trained weights) in eval mode, "
                        "not a new or retrained one."
                    )
                    raise failure(
                        ex, f"outputs differ from the model's by {diff:.2e} (> {tol:g})", hint
                    )
    finally:
        model.train(was_training)
    passed(
        ex,
        f"{path.name} loads with torch.jit.load, no model class needed, and matches the model "
        f"within {tol:g} on batches of 4 and 9",
    )


# --- 8.2 ---------------------------------------------------------------------------------------


def check_dynamic_export(program: Any, model: nn.Module, tol: float = 1e-5) -> None:
    """Exercise 8.2: ``program`` is ``torch.export.export(model, ...)`` with a dynamic batch.

    It must be an ``ExportedProgram`` that accepts batches of 1, 3 and 64 images and matches
    ``model`` (eval mode) to ``tol``.

    Raises:
        AssertionError: with a hint (a fixed batch size shows up as an error at another size).
    """
    ex = "8.2"
    if not isinstance(program, torch.export.ExportedProgram):
        raise failure(
            ex,
            f"program is {type(program).__name__}, not an ExportedProgram",
            "pass what torch.export.export(...) returns (not its .module()).",
        )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    module = program.module()
    try:
        for n in (1, 3, 64):
            x = (fixed_batch(n, 80 + n) - 0.2860) / 0.3530
            try:
                with torch.no_grad():
                    got = module(x)
            except Exception as err:
                raise failure(
                    ex,
                    f"the program refused a batch of {n} ({type(err).__name__})",
                    "declare the batch dimension dynamic: dynamic_shapes={'x': {0: "
                    "torch.export.Dim('batch', min=1, max=1024)}}; without it the program "
                    "accepts only the example's batch size.",
                ) from err
            with torch.no_grad():
                diff = float((got - model(x.to(device)).cpu()).abs().max())
            if diff > tol:
                raise failure(
                    ex,
                    f"outputs differ from the model's by {diff:.2e} on a batch of {n}",
                    "export the trained model you were given, after model.eval().",
                )
    finally:
        model.train(was_training)
    passed(
        ex,
        f"the exported program accepts batches of 1, 3 and 64 and matches the model within {tol:g}",
    )


# --- 8.3 ---------------------------------------------------------------------------------------


def check_cond_export(module_cls: Callable[[nn.Module], nn.Module], tol: float = 1e-5) -> None:
    """Exercise 8.3: ``module_cls(classifier)`` behaves like ``InvertIfBright`` *and* exports.

    The module is exported with a dark example batch; the program must match
    :class:`course_utils.export.InvertIfBright` on dark and on bright batches.

    Raises:
        AssertionError: export fails (a Python ``if`` on a tensor), or a branch is wrong.
    """
    from ..export import InvertIfBright, export_model

    ex = "8.3"
    classifier = seeded_cnn(8, width=4, hidden=16).eval()
    try:
        wrapper = module_cls(classifier).eval()
    except NotImplementedError:
        raise
    except Exception as err:
        raise failure(
            ex,
            f"building the module raised {type(err).__name__}: {err}",
            "its __init__ takes the classifier (and an optional threshold).",
        ) from err
    reference = InvertIfBright(classifier).eval()
    try:
        program = export_model(wrapper, fixed_batch(4, 83)).module()
    except NotImplementedError:
        raise
    except Exception as err:
        hint = (
            "a Python `if` on a tensor's value cannot be exported: write both branches as "
            "functions and choose with torch.cond(pred, true_fn, false_fn, (x,))."
            if "data-dependent" in str(err) or "GuardOnDataDependent" in type(err).__name__
            else "read the error; each branch of torch.cond must return a tensor of the same "
            "shape (return x.clone() rather than x itself)."
        )
        raise failure(ex, f"torch.export failed ({type(err).__name__})", hint) from err
    for name, x in (
        ("dark", fixed_batch(4, 84)),
        ("bright", fixed_batch(4, 85, bright=True)),
        ("bright, batch 7", fixed_batch(7, 86, bright=True)),
    ):
        with torch.no_grad():
            diff = float((program(x) - reference(x)).abs().max())
        if diff > tol:
            raise failure(
                ex,
                f"the exported program differs from InvertIfBright on a {name} batch ({diff:.2e})",
                "bright batches (mean > threshold) must be inverted (1 - x), dark ones left "
                "alone, then normalised with (x - mean) / std before the classifier.",
            )
    passed(
        ex,
        "the module exports with torch.export and keeps both branches: it matches "
        f"InvertIfBright on dark and bright batches within {tol:g}",
    )
