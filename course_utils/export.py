"""Taking a trained model out of Python: TorchScript, ``torch.export``, ONNX, parity and latency.

:func:`make_scriptable` copies a :class:`~course_utils.models.FashionCNN` into TorchScript's subset
of Python; :func:`export_model` and :func:`export_onnx` export with a dynamic batch dimension. The
``save_*`` / ``load_*`` functions write atomically with a SHA-256 next to the file and turn a
missing, truncated or corrupted file into one clear :class:`ModelFileError` (the file plumbing is
:mod:`course_utils.artefacts`, which the torch-free server also uses). :func:`export_dir` is where
chapter 8 writes its files and chapter 9 and the book's "Try the model" page read them.
:func:`max_abs_diff` measures parity, :func:`run_in_fresh_process` loads a saved model in a Python
process that cannot import the course's code, and :func:`measure_latency` times a call (median and
spread). :class:`InvertIfBright` has data-dependent control flow: the tracing pitfall.
"""

from __future__ import annotations

import inspect
import logging
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .artefacts import ModelFileError, save_atomically, sha256_of, verified
from .data import MEAN, STD
from .models import FashionCNN
from .train import checkpoint_path

if TYPE_CHECKING:  # onnxruntime is imported when a session is opened, not with this module
    import onnxruntime

__all__ = [
    "FreshProcessResult",
    "InvertIfBright",
    "LatencyStats",
    "ModelFileError",
    "ScriptableFashionCNN",
    "ONNX_INPUT",
    "ONNX_OUTPUT",
    "export_dir",
    "export_model",
    "export_onnx",
    "load_exported",
    "load_onnx",
    "load_torchscript",
    "make_scriptable",
    "max_abs_diff",
    "measure_latency",
    "run_in_fresh_process",
    "run_onnx",
    "save_exported",
    "save_torchscript",
    "sha256_of",
]


class ScriptableFashionCNN(FashionCNN):
    """``FashionCNN`` with its input-size check written in TorchScript's subset of Python.

    ``FashionCNN.forward`` checks ``tuple(x.shape[-2:]) != self.input_size``; TorchScript cannot
    compile ``tuple()`` of a list (its length is not known statically). This subclass compares the
    two sizes one by one. Everything else (layers, weights, outputs) is inherited unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] != self.input_size[0] or x.shape[-1] != self.input_size[1]:
            raise ValueError(
                f"this FashionCNN was built for {self.input_size[0]}×{self.input_size[1]} "
                f"inputs, got {x.shape}"
            )
        return self.fc2(self.dropout(self.act3(self.bn_fc(self.fc1(self.features(x))))))


def make_scriptable(model: FashionCNN) -> ScriptableFashionCNN:
    """A :class:`ScriptableFashionCNN` with the config, weights, device and mode of ``model``."""
    device = next(model.parameters()).device
    copy = ScriptableFashionCNN(**model.config).to(device)
    copy.load_state_dict(model.state_dict())
    return copy.train(model.training)


class InvertIfBright(nn.Module):
    """Raw pixels in ``[0, 1]`` → logits; inverts images with a bright background first.

    Fashion-MNIST has light clothes on a black background. A photo of a garment on a white table
    is the reverse, so this wrapper inverts an image whose mean pixel is above ``threshold``, then
    normalises it and calls the classifier. The ``if`` depends on the *values* of the input: a
    trace records the branch its example input took, and replays that branch for every input.
    """

    def __init__(self, classifier: nn.Module, threshold: float = 0.5) -> None:
        super().__init__()
        self.classifier = classifier
        self.threshold = threshold
        self.mean, self.std = MEAN, STD  # attributes, not globals: TorchScript needs them so

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > self.threshold:  # one decision for the whole batch, to keep it short
            x = 1.0 - x
        return self.classifier((x - self.mean) / self.std)


def export_model(
    model: nn.Module, example: torch.Tensor, dynamic_batch: bool = True, max_batch: int = 4096
) -> torch.export.ExportedProgram:
    """``torch.export.export(model, (example,))``, with dimension 0 declared dynamic.

    Put ``model`` in eval mode first. ``example``'s other dimensions are fixed in the program; its
    batch dimension is ``Dim("batch", min=1, max=max_batch)``, or, without ``dynamic_batch``, fixed
    too.
    """
    shapes = {"x": {0: torch.export.Dim("batch", min=1, max=max_batch)}} if dynamic_batch else None
    return torch.export.export(model, (example,), dynamic_shapes=shapes)


ONNX_INPUT = "images"
"""Name of the ONNX graph's input: ``float32 [batch, 1, 28, 28]``, normalised like training."""
ONNX_OUTPUT = "logits"
"""Name of the ONNX graph's output: ``float32 [batch, 10]``."""


def export_dir(quick: bool = False) -> Path:
    """Where chapter 8 saves its deployable files (and chapter 9 and the book read them).

    ``checkpoints/08_export/`` (``08_export_quick/`` for a quick run) at the repository root, or
    under ``$COURSE_CHECKPOINT_DIR``: ``fashion_cnn.pt2`` and ``fashion_cnn.onnx``, each with its
    ``.sha256``. It is the folder beside chapter 8's checkpoint name, so both move together.
    """
    return checkpoint_path("08_export", quick=quick).with_suffix("")


def export_onnx(
    model: nn.Module, example: torch.Tensor, path: str | Path, max_batch: int = 4096
) -> Path:
    """``torch.onnx.export(..., dynamo=True)`` with a dynamic batch, saved atomically + SHA-256.

    ``model`` is in eval mode; ``path`` must end in ``.onnx``. The graph's input is named
    :data:`ONNX_INPUT` and its output :data:`ONNX_OUTPUT`; dimension 0 of both is the symbolic
    ``batch`` (1 to ``max_batch``), the others are fixed by ``example`` (e.g. ``x[:8]``). The
    weights are stored inside the one ``.onnx`` file.
    """
    if Path(path).suffix != ".onnx":
        raise ValueError(f"ONNX files must end in .onnx, got {Path(path).name!r}")
    arg = next(iter(inspect.signature(model.forward).parameters))  # "x" for FashionCNN
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        dynamic_shapes={arg: {0: batch}},
        input_names=[ONNX_INPUT],
        output_names=[ONNX_OUTPUT],
        verbose=False,
    )
    return save_atomically(program.save, path)


# --- files ----------------------------------------------------------------------------------------


def save_torchscript(module: torch.jit.ScriptModule, path: str | Path) -> Path:
    """Save a scripted or traced module atomically, with ``<path>.sha256`` beside it."""
    return save_atomically(module.save, path)


def save_exported(program: torch.export.ExportedProgram, path: str | Path) -> Path:
    """Save an ``ExportedProgram`` (the path must end in ``.pt2``) atomically, with a SHA-256."""
    if Path(path).suffix != ".pt2":
        raise ValueError(f"torch.export files must end in .pt2, got {Path(path).name!r}")
    return save_atomically(lambda tmp: torch.export.save(program, tmp), path)


def load_torchscript(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> torch.jit.ScriptModule:
    """``torch.jit.load`` with a SHA-256 check and one clear error for a bad file.

    Raises:
        ModelFileError: the file is missing, empty, does not match its ``.sha256``, or is not a
            readable TorchScript archive (truncated, corrupted, or another format).
    """
    path = verified(path, "TorchScript")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the deprecation, shown in chapter 8
            return torch.jit.load(str(path), map_location=map_location)
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, ValueError, ...
        raise ModelFileError(
            f"TorchScript file {path} could not be loaded ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:160]}); it is truncated, corrupted, or not a file "
            "written by torch.jit.save (a .pt2 file needs load_exported)"
        ) from err


def load_exported(path: str | Path) -> torch.export.ExportedProgram:
    """``torch.export.load`` with a SHA-256 check and one clear error for a bad file.

    Raises:
        ModelFileError: the file is missing, empty, does not match its ``.sha256``, or is not a
            readable ``.pt2`` archive (truncated, corrupted, or another format).
    """
    path = verified(path, "torch.export")
    if path.suffix != ".pt2":
        raise ModelFileError(f"torch.export files end in .pt2; {path.name} does not")
    # torch.export.load logs a full traceback at WARNING level before it raises; we re-raise.
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        return torch.export.load(path)
    except Exception as err:  # noqa: BLE001 - zipfile, RuntimeError, UnicodeDecodeError, ...
        raise ModelFileError(
            f"torch.export file {path} could not be loaded ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:160]}); it is truncated, corrupted, or not a file "
            "written by torch.export.save (a TorchScript file needs load_torchscript)"
        ) from err
    finally:
        logger.setLevel(level)


def load_onnx(
    path: str | Path, require_sidecar: bool = False, threads: int | None = None
) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session (CPU) for ``path``, after its SHA-256 check.

    ``require_sidecar``: refuse a file without ``<path>.sha256`` (what a server should do);
    ``threads``: ONNX Runtime's intra-op threads (``None`` lets it choose).

    Raises:
        ModelFileError: the file is missing, empty, has no sidecar (when required), does not
            match it, or is not a model ONNX Runtime can load.
    """
    import onnxruntime

    path = verified(path, "ONNX", require_sidecar=require_sidecar)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: no warnings about unused initialisers
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ModelFileError(
            f"ONNX file {path} could not be loaded ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:160]}); it is truncated, corrupted, or not an ONNX "
            "model: export it again with export_onnx"
        ) from err


def run_onnx(session: onnxruntime.InferenceSession, x: torch.Tensor) -> torch.Tensor:
    """``session.run`` on a CPU float32 batch, the output as a tensor (for parity and timing)."""
    feed = {session.get_inputs()[0].name: x.detach().cpu().numpy().astype(np.float32)}
    return torch.from_numpy(session.run(None, feed)[0])


# --- parity -------------------------------------------------------------------------------------


def max_abs_diff(
    reference: Callable[[torch.Tensor], torch.Tensor],
    candidate: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
) -> float:
    """Largest absolute difference between the two models' outputs on ``inputs``."""
    with torch.inference_mode():
        return float((reference(inputs) - candidate(inputs)).abs().max())


@dataclass
class FreshProcessResult:
    """What :func:`run_in_fresh_process` brought back."""

    outputs: torch.Tensor
    stdout: str
    script: str


_FRESH_SCRIPT = """\
import sys

sys.modules["course_utils"] = None  # any `import course_utils` now raises ImportError
import torch

kind, model_path, inputs_path, outputs_path = sys.argv[1:]
if kind == "torchscript":
    model = torch.jit.load(model_path)
else:
    model = torch.export.load(model_path).module()
x = torch.load(inputs_path, weights_only=True)
with torch.inference_mode():
    y = model(x)
torch.save(y, outputs_path)
print(f"loaded a {type(model).__name__} with torch {torch.__version__}")
print(f"input {tuple(x.shape)} -> output {tuple(y.shape)}")
loaded = [n for n, m in sys.modules.items() if n.split(".")[0] == "course_utils" and m]
print(f"course_utils modules imported by this process: {loaded}")
"""


def run_in_fresh_process(
    path: str | Path, inputs: torch.Tensor, kind: str = "torchscript", timeout: float = 120
) -> FreshProcessResult:
    """Load ``path`` in a new Python process that cannot import ``course_utils``, run ``inputs``.

    ``path`` is a TorchScript (``kind="torchscript"``) or ``.pt2`` (``kind="export"``) file;
    ``inputs`` travel as a tensor file; the process is stopped after ``timeout`` seconds. Returns
    the outputs, the process's standard output and the script it ran; raises ``RuntimeError``
    with the process's standard error if it failed.
    """
    if kind not in ("torchscript", "export"):
        raise ValueError(f"kind must be 'torchscript' or 'export', got {kind!r}")
    with tempfile.TemporaryDirectory() as folder:
        script, x_path, y_path = (Path(folder) / n for n in ("load.py", "x.pt", "y.pt"))
        script.write_text(_FRESH_SCRIPT)
        torch.save(inputs.detach().cpu(), x_path)
        # -I: isolated mode, so neither the current folder nor PYTHONPATH is on sys.path.
        cmd = [sys.executable, "-I", "-W", "ignore::FutureWarning", str(script)]
        cmd += [kind, str(Path(path).resolve()), str(x_path), str(y_path)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=folder)
        if done.returncode != 0:
            raise RuntimeError(
                f"the fresh process failed (exit {done.returncode}):\n{done.stderr[-2000:]}"
            )
        outputs = torch.load(y_path, weights_only=True)
    return FreshProcessResult(outputs, done.stdout, textwrap.dedent(_FRESH_SCRIPT))


# --- latency ------------------------------------------------------------------------------------


@dataclass
class LatencyStats:
    """Per-call latency in milliseconds over ``repeats`` timed rounds of ``number`` calls each."""

    median_ms: float
    q25_ms: float
    q75_ms: float
    min_ms: float
    max_ms: float
    repeats: int
    number: int

    @property
    def iqr_ms(self) -> float:
        """Inter-quartile range: the spread of the middle half of the rounds."""
        return self.q75_ms - self.q25_ms


def measure_latency(
    fn: Callable[[torch.Tensor], object],
    x: torch.Tensor,
    repeats: int = 7,
    number: int | None = None,
    warmup: int = 5,
    target_round_s: float = 0.1,
) -> LatencyStats:
    """Time ``fn(x)`` under ``torch.inference_mode()``: ``repeats`` rounds of ``number`` calls.

    Each round's mean per-call time is one sample; the median over rounds is robust to a round
    slowed down by another process, and the quartiles and extremes show the spread. If
    ``number`` is ``None`` it is chosen so that one round takes about ``target_round_s``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    with torch.inference_mode():
        for _ in range(warmup):  # first calls are slower (allocations, TorchScript's profiling)
            fn(x)
        if number is None:  # calibrate: as many calls as fit in a fifth of a round
            calls, start = 0, time.perf_counter()
            while calls < 10_000 and time.perf_counter() - start < target_round_s / 5:
                fn(x)
                sync()
                calls += 1
            per_call = (time.perf_counter() - start) / calls
            number = max(1, min(10_000, round(target_round_s / per_call)))
        rounds = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(number):
                fn(x)
            sync()
            rounds.append((time.perf_counter() - start) / number * 1e3)
    q25, median, q75 = np.percentile(rounds, [25, 50, 75])
    return LatencyStats(
        float(median), float(q25), float(q75), min(rounds), max(rounds), repeats, number
    )
