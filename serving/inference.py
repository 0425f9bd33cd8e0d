"""A model file as a prediction function, and the JSON answer of ``/predict``.

:func:`load_model` turns chapter 8's exported file into a function from ``float32
[n, 1, 28, 28]`` NumPy inputs to ``[n, 10]`` logits: ``.onnx`` through ONNX Runtime (torch is
not imported), ``.pt2`` through ``torch.export``, ``.pt`` (a state_dict checkpoint, the load
benchmark's baseline) through the course's model class. Every kind must match its SHA-256
sidecar. :func:`response_from_logits` (NumPy) and :func:`predict_response` (PyTorch)
build the answer the API sends.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from course_utils.artefacts import ModelFileError, verified
from course_utils.fashion_mnist import CLASSES

if TYPE_CHECKING:
    import torch

__all__ = ["MODEL_SUFFIXES", "load_model", "predict_response", "response_from_logits"]

MODEL_SUFFIXES = (".onnx", ".pt2", ".pt")


# --- the model file -------------------------------------------------------------------------------


def load_model(path: str | Path, threads: int = 1) -> Callable[[np.ndarray], np.ndarray]:
    """Load a model file for serving: a function from ``float32 [n, 1, 28, 28]`` inputs to
    ``[n, 10]`` logits, both NumPy arrays.

    ``.onnx`` runs in ONNX Runtime (no torch), ``.pt2`` is a ``torch.export`` program, ``.pt`` a
    state_dict checkpoint (the only one that needs the course's model class). ``threads`` is ONNX
    Runtime's intra-op thread count: 1 suits a server that runs one small image per request on
    each of several worker threads (the ``serve`` command sets PyTorch's, a global, likewise).

    Raises:
        ModelFileError: the file is missing, empty, has no ``.sha256`` sidecar, does not match
            it, is of an unknown kind or cannot be loaded.
    """
    path = Path(path)
    if path.suffix not in MODEL_SUFFIXES:
        raise ModelFileError(
            f"{path.name}: the server takes {', '.join(MODEL_SUFFIXES)} files; export the model "
            "with chapter 8 (an .onnx file is the usual choice)"
        )
    if path.suffix == ".onnx":
        return _onnx_model(verified(path, "ONNX model", require_sidecar=True), threads)
    if path.suffix == ".pt2":
        return _exported_model(verified(path, "torch.export", require_sidecar=True))
    return _checkpoint_model(verified(path, "checkpoint", require_sidecar=True))


def _onnx_model(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - ORT raises its own types for a bad file
        raise ModelFileError(f"ONNX Runtime could not load {path}: {err}") from None
    input_name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: x})[0]

    return run


def _exported_model(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    try:
        module = torch.export.load(path).module()
    except Exception as err:  # noqa: BLE001 - torch raises many types for a damaged archive
        raise ModelFileError(f"torch.export.load could not read {path}: {err}") from None
    return _torch_runner(module)


def _checkpoint_model(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    from course_utils.train import CheckpointError, load_checkpoint

    try:
        model, _ = load_checkpoint(path, map_location="cpu")
    except CheckpointError as err:
        raise ModelFileError(str(err)) from None
    return _torch_runner(model.eval())


def _torch_runner(module: Any) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    run.module = module  # type: ignore[attr-defined]  # for tests that hook the forward pass
    return run


# --- the answer -----------------------------------------------------------------------------------


def response_from_logits(logits: np.ndarray, top_k: int = 3) -> dict[str, Any]:
    """The ``/predict`` JSON body for one image's ``[10]`` logits: the softmax's ``top_k``
    largest probabilities first, as plain Python floats and ints (JSON-serialisable)."""
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    exp = np.exp(z - z.max())
    probs = exp / exp.sum()
    order = np.argsort(-probs, kind="stable")[:top_k]
    best = int(order[0])
    return {
        "label": CLASSES[best],
        "class_index": best,
        "probabilities": [
            {"label": CLASSES[int(i)], "class_index": int(i), "probability": float(probs[i])}
            for i in order
        ],
    }


def predict_response(model: torch.nn.Module, x: torch.Tensor, top_k: int = 3) -> dict[str, Any]:
    """The ``/predict`` JSON body for a PyTorch ``model`` and one input ``x`` ``[1, 1, 28, 28]``.

    Runs under ``torch.inference_mode()``; the probabilities are the softmax of the logits, the
    ``top_k`` largest first, as plain Python floats and ints (JSON-serialisable).
    """
    import torch

    with torch.inference_mode():
        probs = torch.softmax(model(x), dim=1)[0]
    values, indices = probs.topk(top_k)
    best = int(indices[0])
    return {
        "label": CLASSES[best],
        "class_index": best,
        "probabilities": [
            {"label": CLASSES[int(i)], "class_index": int(i), "probability": float(p)}
            for p, i in zip(values, indices, strict=True)
        ],
    }
