"""Checks of the chapter 8 exercises: a traced file, an export with its parity test, and exported
control flow."""

from __future__ import annotations

import copy
import math
import tempfile
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import nn

from .. import export as course_export
from ._common import (
    ShortcutRefused,
    aliases,
    call,
    failure,
    fixed_batch,
    passed,
    refuse,
    seeded_cnn,
)

__all__ = [
    "check_cond_export",
    "check_export_and_parity",
    "check_traced_file",
]

_NORMALISED = (0.2860, 0.3530)  # Fashion-MNIST's mean and std: the checks' inputs look real


def _images(n: int, seed: int) -> torch.Tensor:
    mean, std = _NORMALISED
    return (fixed_batch(n, seed) - mean) / std


def _training_mode_hint(run: Callable[[torch.Tensor], torch.Tensor], what: str) -> str | None:
    """Why ``run`` looks like a copy made in training mode, or ``None``.

    Dropout recorded in training mode gives a new answer at every call; BatchNorm in training mode
    normalises with the batch's own statistics, so an image's logits depend on the other images
    in its batch. In eval mode neither happens.
    """
    x = _images(9, 87)
    with torch.no_grad():
        first, again, alone = run(x), run(x), run(x[:4])
    if not (torch.isfinite(first).all() and torch.isfinite(alone).all()):
        return (
            f"the {what} gives NaN or infinite logits where the model's are finite: save the "
            "model you were given, with its trained weights, after model.eval()."
        )
    if not torch.allclose(first, again, atol=1e-6):
        return (
            f"the {what} gives different outputs for the same batch: dropout was recorded in "
            "training mode. Call model.eval() first."
        )
    if not torch.allclose(first[:4], alone, atol=1e-4):
        return (
            f"the {what}'s outputs for an image depend on the other images in its batch: "
            "BatchNorm was recorded in training mode (batch statistics). Call model.eval() first."
        )
    return None


# --- 8.1 ---------------------------------------------------------------------------------------


def check_traced_file(path: Any, model: nn.Module, tol: float = 1e-5) -> None:
    """Exercise 8.1: ``path`` is a TorchScript file whose outputs match ``model`` (≤ ``tol``).

    The file is loaded with ``torch.jit.load`` (no model class needed) and run on fixed batches
    of 4 and 9 images; ``model`` runs in eval mode on the same batches. A file traced in training
    mode is recognised (dropout: outputs change from call to call; BatchNorm: an image's outputs
    depend on its batch) and named in the hint.

    Raises:
        AssertionError: no file, not a TorchScript file, or outputs that differ, with a hint.
    """
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
                x = _images(n, seed)
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
                if not diff <= tol:  # NaN outputs differ too
                    hint = _training_mode_hint(loaded, "traced file") or (
                        "trace the model you were given (its trained weights) in eval mode, "
                        "not a new or retrained one."
                    )
                    raise failure(
                        ex,
                        f"on a batch of {n} test-like images the file's outputs differ from the "
                        f"model's (eval mode) by {diff:.2e} (> {tol:g})",
                        hint,
                    )
    finally:
        model.train(was_training)
    passed(
        ex,
        f"{path.name} loads with torch.jit.load, no model class needed, and matches the model "
        f"(with its dropout and BatchNorm in eval mode) within {tol:g} on batches of 4 and 9",
    )


# --- 8.2 ---------------------------------------------------------------------------------------


class _Planted(nn.Module):
    """A copy of ``reference`` with one planted fault, recording the batch sizes it was given."""

    def __init__(self, reference: nn.Module, fault: str) -> None:
        super().__init__()
        self.reference, self.fault = copy.deepcopy(reference).eval(), fault
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        self.seen.append(n)
        if self.fault == "fixed batch" and n != 8:
            raise AssertionError("Guard failed: x.size()[0] == 8")  # what torch.export raises
        out = self.reference(x).clone()
        if self.fault == "too high, last row" and n > 1:
            out[-1, 3] += 0.01
        elif self.fault == "too low, last row" and n > 1:
            out[-1, 7] -= 0.01
        elif self.fault == "too low, batch of 1" and n == 1:
            out[0, 2] -= 0.01
        elif self.fault == "two logits off, last row" and n > 1:
            out[-1, 1] += 0.01
            out[-1, 8] -= 0.01
        return out


class _OffByOne(nn.Module):
    """``inner`` with logit 3 of every row 0.01 too high (what the check hands back as the
    program loaded from the file, to see that ``export_and_check`` tests what it loaded)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x).clone()
        out[:, 3] += 0.01
        return out


class _PlantedProgram:
    """An ``ExportedProgram`` whose ``.module()`` is off by 0.01 (:class:`_OffByOne`)."""

    def __init__(self, program: Any) -> None:
        self._program = program

    def module(self, *args: Any, **kwargs: Any) -> nn.Module:
        return _OffByOne(self._program.module(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._program, name)


_PARITY_CASES = {  # planted fault: what the parity function was given
    "too high, last row": "a program with one logit 0.01 too high in the last row of a batch",
    "too low, last row": "a program with one logit 0.01 too low in the last row of a batch",
    "too low, batch of 1": "a program with one logit 0.01 too low on a batch of one image",
    "two logits off, last row": "a program with two logits of the last row 0.01 off (one too "
    "high, one too low)",
}


def _parity_hint(found: dict[str, float]) -> str:
    """The likely mistake of a parity function, from what it reported for the planted faults
    (each off by exactly 0.01 at its largest); where the pattern names no mistake, what was
    measured and what was expected."""
    caught = {fault: value >= 0.0099 for fault, value in found.items()}
    if any(value > 0.0101 for value in found.values()):
        fault, value = next((f, v) for f, v in found.items() if v > 0.0101)
        return (
            f"parity reported {value:.4g} for {_PARITY_CASES[fault]}, whose largest difference "
            "is 0.01: return the largest absolute difference, .abs().max(), not a sum or a norm "
            "(they grow with the number of logits that differ)."
        )
    if any(0 < value < 0.0099 for value in found.values()):
        return (
            "report the largest absolute difference, .abs().max(), not a mean: a mean dilutes "
            "one wrong logit among all the others."
        )
    if caught["too high, last row"] != caught["too low, last row"]:
        return (
            "take the absolute value before the max: (reference(x) - candidate(x)).abs().max(); "
            "the max of a signed difference misses a candidate that is off the other way."
        )
    if caught["too low, batch of 1"] and not caught["too high, last row"]:
        return (
            "compare every row of every batch: the faults in the last row of a larger batch "
            "were missed, the one on a batch of one image was caught."
        )
    if not any(caught.values()):
        return (
            "parity reported " + ", ".join(f"{v!r}" for v in found.values()) + " for the "
            f"{len(found)} planted programs, each with logits off by 0.01 (expected 0.01 each): "
            "compare the logits themselves, (reference(x) - candidate(x)).abs().max(), on every "
            "row of every batch, not predicted classes or rounded values."
        )
    return (
        f"parity reported {found['too low, batch of 1']!r} for "
        f"{_PARITY_CASES['too low, batch of 1']} (expected 0.01): compare every row of every "
        "batch, the batch of one image included, and keep the worst difference."
    )


def _check_parity(parity: Callable[..., Any], reference: nn.Module, ex: str) -> None:
    sizes = (1, 3, 17)
    honest = _Planted(reference, "none")
    result = call(
        ex,
        "parity(reference, exact_copy, (1, 3, 17))",
        parity,
        reference,
        honest,
        sizes,
        hint="parity(reference, candidate, batch_sizes) runs both on the same random batch of "
        "each size and returns the largest absolute difference as a float.",
    )
    if isinstance(result, bool) or not isinstance(result, (int, float)):
        raise failure(
            ex,
            f"parity returned {type(result).__name__}, not a float",
            "return float(difference): a number the caller can compare with a tolerance.",
        )
    if not math.isfinite(result) or result > 1e-6:
        raise failure(
            ex,
            f"parity reported {result!r} for an exact copy of the reference",
            "feed the same input to both: make x once per batch size and call reference(x) "
            "and candidate(x) on it (in eval mode, under torch.inference_mode()).",
        )
    missing = sorted(set(sizes) - set(honest.seen))
    if missing:
        raise failure(
            ex,
            f"parity(..., batch_sizes={sizes}) never ran a batch of {missing[0]} "
            f"(sizes run: {sorted(set(honest.seen))})",
            "loop over batch_sizes and make a batch of each size: torch.randn(n, 1, 28, 28).",
        )
    found = {}
    for fault, what in _PARITY_CASES.items():
        value = call(
            ex,
            f"parity on {what}",
            parity,
            reference,
            _Planted(reference, fault),
            sizes,
            hint="a wrong program must not crash parity: compute the difference and return it.",
        )
        found[fault] = float(value) if isinstance(value, (int, float)) else math.nan
    missed = [fault for fault, value in found.items() if not 0.0099 <= value <= 0.0101]
    if missed:
        raise failure(
            ex,
            f"parity reported {found[missed[0]]!r} for {_PARITY_CASES[missed[0]]} (expected 0.01)",
            _parity_hint(found),
        )
    try:
        refused = parity(reference, _Planted(reference, "fixed batch"), sizes)
    except (NotImplementedError, ShortcutRefused):
        raise
    except Exception:
        refused = math.inf  # raising is a fine way to report it
    if not (isinstance(refused, (int, float)) and (refused > 1e-3 or math.isnan(refused))):
        raise failure(
            ex,
            f"parity reported {refused!r} for a program that refuses every batch size but 8",
            "do not swallow the error: a program that cannot run a batch size does not match; "
            "let the exception propagate (or return float('inf')).",
        )


def _export_error_hint(err: Exception) -> str:
    """One hint for an error raised inside the learner's ``export_and_check``."""
    message = str(err)
    if "Guard failed" in message and ".size()[0]" in message:
        return (
            "the program accepts only the example's batch size: declare the batch dimension "
            "dynamic with dynamic_shapes={'x': {0: torch.export.Dim('batch', min=1, "
            "max=1024)}}."
        )
    if "training" in message:
        return "the model is still in training mode: call model.eval() before exporting."
    return (
        "export with torch.export.export(model, (example,), dynamic_shapes=...), save with "
        "torch.export.save(program, path), and load with torch.export.load(path)."
    )


def _settled_model(seed: int) -> nn.Module:
    """A small CNN with dropout and BatchNorm whose running statistics are not the defaults,
    left in training mode (as training leaves it)."""
    model = seeded_cnn(seed, width=4, hidden=16, norm="batch", dropout=0.5)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        for s in range(5):
            model(_images(32, 300 + s) * 1.5 + 0.3)
    return model.train()


def _check_tests_the_file(
    ex: str,
    export_and_check: Callable[[nn.Module, Path], Any],
    shortcuts: list[tuple[object, str]],
) -> None:
    """Run ``export_and_check`` again with ``torch.export.load`` handing back a program off by
    0.01: the number it returns must show it (or it may raise). A function that tests the model
    against itself, or the program before it was saved, cannot tell a broken file."""
    original = torch.export.load

    def planted_load(*args: Any, **kwargs: Any) -> Any:
        return _PlantedProgram(original(*args, **kwargs))

    loads = [(torch.export, "load"), *aliases([export_and_check], [(torch.export, "load")])]
    with tempfile.TemporaryDirectory() as folder, ExitStack() as stack:
        for owner, name in loads:
            stack.enter_context(mock.patch.object(owner, name, planted_load))
        with refuse(ex, shortcuts, task="the export and its parity test"):
            try:
                again = export_and_check(_settled_model(83), Path(folder) / "model.pt2")
            except (NotImplementedError, ShortcutRefused):
                raise
            except Exception:  # noqa: BLE001 - refusing a broken file is a fine way to report it
                again = math.inf
    if isinstance(again, torch.Tensor) and again.numel() == 1:
        again = again.item()
    if isinstance(again, bool) or not isinstance(again, int | float) or not again >= 0.0099:
        raise failure(
            ex,
            f"export_and_check returned {again!r} when the program loaded back from its file was "
            "off by 0.01 in one logit (the check altered what torch.export.load returned)",
            "test the file: load it back with torch.export.load(path) and return "
            "parity(model, loaded.module()), not the parity of the model with itself or with "
            "the program before it was saved.",
        )


def check_export_and_parity(
    export_and_check: Callable[[nn.Module, Path], Any],
    parity: Callable[..., Any],
    tol: float = 1e-5,
) -> None:
    """Exercise 8.2: a parity test that catches broken programs, and a checked export.

    ``parity(reference, candidate, batch_sizes)`` must return ≈ 0 for an exact copy, run every
    batch size it is given, and report 0.01 (the largest absolute difference, not a sum or a
    mean) for programs with logits off by 0.01 (one too high, one too low, at batch 1 only, at
    larger batches only; two in one row); a program that refuses a batch size must make it
    raise or return more than 1e-3.

    ``export_and_check(model, path)`` gets a small CNN with dropout and BatchNorm in training
    mode; the ``.pt2`` file it writes must load with ``torch.export.load``, run batches of 2, 5 and
    33 (so the batch dimension is dynamic), and match the model in eval mode within ``tol``; the
    number it returns must be ≤ ``tol``. Run again with ``torch.export.load`` handing back a
    program off by 0.01, it must return at least 0.01 (or raise): it tests the file it loaded,
    not the model against itself. ``course_utils.export``'s ``export_model``,
    ``save_exported``, ``load_exported`` and ``max_abs_diff`` are switched off meanwhile.

    Raises:
        AssertionError: the failing case and a hint.
    """
    ex = "8.2"
    shortcuts = [
        (course_export, "export_model"),
        (course_export, "save_exported"),
        (course_export, "load_exported"),
        (course_export, "max_abs_diff"),
    ]
    shortcuts += aliases([export_and_check, parity], shortcuts)
    reference = _settled_model(81).eval()
    with refuse(ex, shortcuts, task="the export and its parity test"):
        _check_parity(parity, reference, ex)
    model = _settled_model(82)
    expected_model = copy.deepcopy(model).eval()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pt2"
        with refuse(ex, shortcuts, task="the export and its parity test"):
            try:
                reported = export_and_check(model, path)
            except (NotImplementedError, ShortcutRefused):
                raise
            except Exception as err:  # torch's guards raise AssertionError
                first_line = (str(err).strip().splitlines() or [""])[0][:120]
                raise failure(
                    ex,
                    f"export_and_check(model, path) raised {type(err).__name__}: {first_line}",
                    _export_error_hint(err),
                ) from err
        if not path.is_file():
            raise failure(
                ex, "export_and_check wrote no file at path", "torch.export.save(program, path)."
            )
        try:
            loaded = torch.export.load(path)
        except Exception as err:
            raise failure(
                ex,
                f"torch.export.load cannot read the file ({type(err).__name__})",
                "write it with torch.export.save(program, path), not torch.save.",
            ) from err
        program = loaded.module()
        for n in (2, 5, 33):
            x = _images(n, 90 + n)
            try:
                with torch.no_grad():
                    got = program(x)
            except Exception as err:
                raise failure(
                    ex,
                    f"the saved program refused a batch of {n} ({type(err).__name__})",
                    "declare the batch dimension dynamic: dynamic_shapes={'x': {0: "
                    "torch.export.Dim('batch', min=1, max=1024)}}; without it the program "
                    "accepts only the example's batch size.",
                ) from err
            with torch.no_grad():
                diff = float((got - expected_model(x)).abs().max())
            if not diff <= tol:  # NaN outputs differ too
                hint = _training_mode_hint(program, "saved program") or (
                    "export the model you were given, after model.eval()."
                )
                raise failure(
                    ex,
                    f"on a batch of {n}, the saved program differs from the model in eval mode "
                    f"by {diff:.2e}",
                    hint,
                )
    if isinstance(reported, bool) or not isinstance(reported, (int, float)):
        raise failure(
            ex,
            f"export_and_check returned {type(reported).__name__}, not a float",
            "return what parity(model, loaded.module(), batch_sizes) returns.",
        )
    if not 0 <= reported <= tol:
        raise failure(
            ex,
            f"export_and_check returned {reported!r}, but the file matches the model "
            f"within {tol:g}",
            "compare the model in eval mode with the program you loaded back from the file.",
        )
    _check_tests_the_file(ex, export_and_check, shortcuts)
    passed(
        ex,
        "parity catches programs off by 0.01 in one logit and one that refuses a batch size; "
        "export_and_check's .pt2 loads with torch.export.load, runs batches of 2, 5 and 33, and "
        f"matches the model (dropout and BatchNorm in eval mode) within {tol:g}",
    )


# --- 8.3 ---------------------------------------------------------------------------------------


def _cond_nodes(program: torch.export.ExportedProgram) -> int:
    """How many ``torch.cond`` (the higher-order op ``cond``) the exported graph holds, nested
    graphs included."""
    cond = getattr(torch.ops.higher_order, "cond", None)
    return sum(
        node.op == "call_function" and (node.target is cond or str(node.target) == "cond")
        for module in program.graph_module.modules()
        if isinstance(module, torch.fx.GraphModule)
        for node in module.graph.nodes
    )


def _graph_ops(program: torch.export.ExportedProgram) -> list[str]:
    """The names of the operations in the exported graph, in order, before the classifier."""
    names = []
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        name = str(node.target).removeprefix("aten.").split(".")[0]
        if name == "conv2d":
            break
        names.append(name)
    return names


def _branch_hint(
    program: Callable[[torch.Tensor], torch.Tensor],
    classifier: nn.Module,
    reference: nn.Module,
    x: torch.Tensor,
    name: str,
    threshold: float,
) -> str:
    """What the program did with the batch ``x``, compared with what it should have done."""
    mean, std = reference.mean, reference.std
    with torch.no_grad():
        got = program(x)
        outcomes = {
            "kept": classifier((x - mean) / std),
            "inverted": classifier((1.0 - x - mean) / std),
            "kept, not normalised": classifier(x),
            "inverted, not normalised": classifier(1.0 - x),
        }
    did = next((k for k, v in outcomes.items() if torch.allclose(got, v, atol=1e-4)), None)
    should = "inverted" if float(x.mean()) > threshold else "kept"
    if did is not None and did.endswith("not normalised"):
        return (
            "normalise after choosing the branch: self.classifier((x - self.mean) / self.std), "
            "as InvertIfBright does."
        )
    if did is None:
        return (
            f"on this {name} batch (mean {float(x.mean()):.2f}, threshold {threshold:g}) the "
            f"program's logits are neither the classifier's on the batch kept nor on it "
            f"inverted; expected it {should} (1 - x if x.mean() > threshold), then normalised."
        )
    if name.startswith("mixed"):
        return (
            f"this batch mixes dark and bright images (mean of the whole batch "
            f"{float(x.mean()):.2f} vs threshold {threshold:g}): decide once, for the whole "
            f"batch, with x.mean() > self.threshold, as InvertIfBright does; the program "
            f"{did} it, it should be {should}."
        )
    if name.startswith("threshold"):
        return (
            f"with threshold={threshold:g} this batch (mean {float(x.mean()):.2f}) must be "
            f"{should}, and the program {did} it: compare with self.threshold, not a number "
            "typed in."
        )
    return (
        f"the program {did} a {name} batch (mean {float(x.mean()):.2f} vs threshold "
        f"{threshold:g}), which must be {should}: torch.cond runs true_fn when pred is True, "
        "so pred = x.mean() > self.threshold, true_fn inverts (1 - t), false_fn returns "
        "t.clone()."
    )


def _program_diff(
    ex: str,
    program: Callable[[torch.Tensor], Any],
    reference: nn.Module,
    x: torch.Tensor,
    name: str,
) -> float:
    """The largest absolute difference of the program's logits from the reference's on ``x``
    (NaN counts as a difference); a program that fails on the batch is a ❌."""
    try:
        with torch.no_grad():
            got = program(x)
    except Exception as err:
        raise failure(
            ex,
            f"the exported program failed on a {name} batch of {len(x)} ({type(err).__name__})",
            "choose the branch with torch.cond(x.mean() > self.threshold, true_fn, false_fn, "
            "(x,)); both branches take x and return a tensor of its shape.",
        ) from err
    if not isinstance(got, torch.Tensor) or got.shape != (len(x), 10):
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        raise failure(
            ex,
            f"the exported program returned {shape} for a {name} batch of {len(x)}",
            "return the classifier's logits, [N, 10].",
        )
    with torch.no_grad():
        return float((got - reference(x)).abs().max())


def check_cond_export(module_cls: Callable[[nn.Module], nn.Module], tol: float = 1e-5) -> None:
    """Exercise 8.3: ``module_cls(classifier)`` behaves like ``InvertIfBright`` *and* exports
    with ``torch.cond``.

    The module is exported with a dark example batch; the graph must hold a ``cond`` node (the
    higher-order op that ``torch.cond`` records: ``torch.where`` or arithmetic that blends both
    branches is not what the task asks), and the program must match
    :class:`course_utils.export.InvertIfBright` on dark and bright batches, on batches that mix
    dark and bright images (one decision for the whole batch, by its mean), and, built with
    ``threshold=0.2``, on a batch whose mean lies between 0.2 and 0.5 (``self.threshold``, not
    a number typed in).

    Raises:
        AssertionError: export fails (a Python ``if`` on a tensor), no ``cond`` in the graph, or
            a branch is wrong.
    """
    from ..export import InvertIfBright, export_model

    ex = "8.3"
    classifier = seeded_cnn(8, width=4, hidden=16).eval()

    def exported(threshold: float | None) -> tuple[Any, Callable[[torch.Tensor], torch.Tensor]]:
        kwargs = {} if threshold is None else {"threshold": threshold}
        wrapper = call(
            ex,
            "building the module" + (f" with threshold={threshold:g}" if kwargs else ""),
            module_cls,
            classifier,
            hint="its __init__ takes the classifier and an optional threshold, as "
            "InvertIfBright's does: subclass InvertIfBright and write forward only.",
            **kwargs,
        )
        if not isinstance(wrapper, nn.Module):
            raise failure(ex, "the module is not an nn.Module", "subclass InvertIfBright.")
        try:
            program = export_model(wrapper.eval(), fixed_batch(4, 83))
        except NotImplementedError:
            raise
        except Exception as err:
            hint = (
                "a Python `if` on a tensor's value cannot be exported: write both branches as "
                "functions and choose with torch.cond(pred, true_fn, false_fn, (x,))."
                if "data-dependent" in str(err) or "GuardOnDataDependent" in type(err).__name__
                else "read the error; each branch of torch.cond must return a tensor of the "
                "same shape (return x.clone() rather than x itself)."
            )
            raise failure(ex, f"torch.export failed ({type(err).__name__})", hint) from err
        return program, program.module()

    program, module = exported(None)
    if not _cond_nodes(program):
        ops = _graph_ops(program)
        if "where" in ops:
            hint = (
                "torch.where computes both branches for every pixel and picks per element; the "
                "task asks for torch.cond(pred, true_fn, false_fn, (x,)), which runs one branch "
                "and puts both in the graph as a cond."
            )
        else:
            shown = ", ".join(ops[:8]) or "none"
            hint = (
                f"before the classifier the graph computes {shown}, with no cond: choose the "
                "branch with torch.cond(x.mean() > self.threshold, true_fn, false_fn, (x,))."
            )
        raise failure(ex, "the exported graph holds no torch.cond (no `cond` node)", hint)
    reference = InvertIfBright(classifier).eval()
    # One decision per batch, by its mean: a batch that mixes dark and bright images tells it
    # apart from a decision per image, or by the first or the last image.
    mostly_bright = torch.cat([fixed_batch(1, 87), fixed_batch(4, 88, bright=True)])
    mostly_dark = torch.cat([fixed_batch(4, 89), fixed_batch(1, 90, bright=True)])
    for name, x in (
        ("dark", fixed_batch(4, 84)),
        ("bright", fixed_batch(4, 85, bright=True)),
        ("bright, batch 7", fixed_batch(7, 86, bright=True)),
        ("mixed, mostly bright, first image dark", mostly_bright),
        ("mixed, mostly dark, last image bright", mostly_dark),
    ):
        diff = _program_diff(ex, module, reference, x, name)
        if not diff <= tol:
            raise failure(
                ex,
                f"the exported program differs from InvertIfBright on a {name} batch ({diff:.2e})",
                _branch_hint(module, classifier, reference, x, name, reference.threshold),
            )
    _, low_module = exported(0.2)
    low_reference = InvertIfBright(classifier, threshold=0.2).eval()
    middle = fixed_batch(4, 91) + 0.2  # pixels in [0.2, 0.5]: mean about 0.35
    diff = _program_diff(ex, low_module, low_reference, middle, "threshold 0.2")
    if not diff <= tol:
        raise failure(
            ex,
            f"built with threshold=0.2, the exported program differs from InvertIfBright("
            f"classifier, threshold=0.2) on a batch of mean {float(middle.mean()):.2f} "
            f"({diff:.2e})",
            _branch_hint(low_module, classifier, low_reference, middle, "threshold 0.2", 0.2),
        )
    passed(
        ex,
        "the module exports with torch.export and keeps both branches: it matches "
        f"InvertIfBright on dark and bright batches within {tol:g}",
    )
