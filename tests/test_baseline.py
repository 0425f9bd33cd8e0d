"""load_or_train_baseline: trains and saves when the checkpoint is missing, loads it otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from course_utils.baseline import load_or_train_baseline
from course_utils.models import FashionCNN


@pytest.mark.slow
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


def test_the_fallback_trains_with_chapter_1s_settings() -> None:
    """The chapters that load chapter 1's model say the fallback is chapter 1's recipe: its
    epochs, learning rate and batch size must be the ones chapter 1's parameters cell sets."""
    import ast
    import inspect
    import json
    import re

    from course_utils import baseline

    notebook = Path(__file__).parents[1] / "notebooks" / "01_baseline_cnn.ipynb"
    cells = json.loads(notebook.read_text())["cells"]
    source = next(
        "".join(c["source"]) for c in cells if "parameters" in c["metadata"].get("tags", [])
    )
    chapter = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign)
    }
    assert chapter["EPOCHS"] == baseline.EPOCHS
    code = inspect.getsource(baseline.load_or_train_baseline)
    (lr,) = re.findall(r"Adam\(model.parameters\(\), lr=([0-9.e-]+)\)", code)
    assert float(lr) == chapter["LR"]
    assert f"TensorLoader(train, {chapter['BATCH_SIZE']}," in code
