"""serving.inference: a checkpoint is verified like an export, and the answer's softmax."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from course_utils.artefacts import ModelFileError
from course_utils.fashion_mnist import CLASSES
from course_utils.models import FashionCNN
from course_utils.train import save_checkpoint
from serving.inference import load_model, predict_response, response_from_logits

# Distinct logits in a shuffled order: the answer must list classes 3, 7, 0, ... first.
SPREAD = np.array([7.0, 1.5, 3.0, 9.0, 0.5, 2.0, 5.5, 8.0, 4.0, 1.0])


def reference_softmax(z: np.ndarray) -> np.ndarray:
    """Float64 softmax through log-sum-exp (no shift by the max needed)."""
    z = np.asarray(z, dtype=np.float64)
    return np.exp(z - np.logaddexp.reduce(z))


@pytest.mark.parametrize("offset", [0.0, 1000.0, -1000.0, 1e6])
def test_response_from_logits_is_stable_for_huge_logits(offset: float) -> None:
    """Breaks if the softmax forgets to subtract the max: exp(1000) overflows, exp(-1000)
    underflows, and the probabilities become NaN."""
    logits = (SPREAD + offset).astype(np.float32 if abs(offset) < 1e5 else np.float64)
    answer = response_from_logits(logits, top_k=10)
    probs = np.array([p["probability"] for p in answer["probabilities"]])
    order = [p["class_index"] for p in answer["probabilities"]]
    assert np.isfinite(probs).all() and probs.sum() == pytest.approx(1.0, abs=1e-12)
    assert order == list(np.argsort(-SPREAD)) and answer["class_index"] == 3
    assert answer["label"] == CLASSES[3] == answer["probabilities"][0]["label"]
    np.testing.assert_allclose(probs, reference_softmax(logits)[order], rtol=1e-9, atol=0)


class FixedLogits(torch.nn.Module):
    """A model whose logits are given, whatever the input."""

    def __init__(self, logits: np.ndarray) -> None:
        super().__init__()
        self.logits = torch.tensor(logits, dtype=torch.float32)[None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1)


@pytest.mark.parametrize("top_k", [1, 3, 10])
@pytest.mark.parametrize("source", ["cnn", "huge"])
def test_predict_response_agrees_with_response_from_logits(top_k: int, source: str) -> None:
    """Breaks if the PyTorch and NumPy answers differ in labels, order or probabilities."""
    torch.manual_seed(0)
    x = torch.randn(1, 1, 28, 28)
    model = FashionCNN().eval() if source == "cnn" else FixedLogits(SPREAD + 1000.0)
    with torch.inference_mode():
        logits = model(x)[0].numpy()
    ours, reference = predict_response(model, x, top_k), response_from_logits(logits, top_k)
    assert len(ours["probabilities"]) == top_k
    assert {k: v for k, v in ours.items() if k != "probabilities"} == {
        k: v for k, v in reference.items() if k != "probabilities"
    }
    for mine, theirs in zip(ours["probabilities"], reference["probabilities"], strict=True):
        assert mine["label"] == theirs["label"] and mine["class_index"] == theirs["class_index"]
        assert isinstance(mine["probability"], float)
        assert mine["probability"] == pytest.approx(theirs["probability"], rel=1e-5, abs=1e-7)


def test_a_checkpoint_is_served_only_with_a_matching_sidecar(tmp_path: Path) -> None:
    """Breaks if ``load_model`` serves a ``.pt`` with no integrity check, as it does an export."""
    path = save_checkpoint(FashionCNN(width=4, hidden=16), tmp_path / "model.pt")
    sidecar = tmp_path / "model.pt.sha256"
    x = np.zeros((2, 1, 28, 28), np.float32)
    assert load_model(path)(x).shape == (2, 10)

    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(blob)
    with pytest.raises(ModelFileError, match="does not match its recorded SHA-256"):
        load_model(path)
    sidecar.unlink()
    with pytest.raises(ModelFileError, match="has no model.pt.sha256 beside it"):
        load_model(path)
