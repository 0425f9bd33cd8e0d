"""load_or_train_baseline: trains and saves when the checkpoint is missing, loads it otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from course_utils.baseline import load_or_train_baseline
from course_utils.models import FashionCNN


def test_trains_once_then_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first call trains and writes the quick checkpoint; the second only loads it."""
    monkeypatch.setenv("COURSE_CHECKPOINT_DIR", str(tmp_path))
    first = load_or_train_baseline(quick=True)
    assert "training the chapter-1 baseline" in capsys.readouterr().out
    saved = tmp_path / "01_baseline_cnn_quick.pt"
    stamp = saved.stat().st_mtime_ns
    second = load_or_train_baseline(quick=True)
    assert "training" not in capsys.readouterr().out
    assert saved.stat().st_mtime_ns == stamp
    assert isinstance(second, FashionCNN) and not second.training
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(first(x), second(x))
    assert not (tmp_path / "01_baseline_cnn.pt").exists(), "quick mode must not write the full one"
