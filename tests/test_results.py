"""``course_utils.build.results``: chapters' metrics and execution times round-trip through JSON,
one folder per mode, in a temporary ``$COURSE_METRICS_DIR``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from course_utils.build.results import (
    metrics_dir,
    read_execution_times,
    read_metrics,
    record_execution_time,
    record_metrics,
)


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COURSE_METRICS_DIR", str(tmp_path))
    return tmp_path


def test_record_metrics_writes_what_read_metrics_returns(folder: Path) -> None:
    path = record_metrics("02_batchnorm", "cpu", True, test_accuracy=0.875, runs={"bn": 2})
    assert path == folder / "02_batchnorm.json" == metrics_dir(quick=True) / path.name
    record = json.loads(path.read_text())
    assert record["chapter"] == "02_batchnorm" and record["device"] == "cpu"
    assert record["mode"] == "quick"
    assert record["metrics"] == {"test_accuracy": 0.875, "runs": {"bn": 2}}
    record_metrics("01_baseline_cnn", "cuda", False, test_accuracy=0.91)
    records = read_metrics(quick=True)
    assert list(records) == ["01_baseline_cnn", "02_batchnorm"]
    assert records["01_baseline_cnn"]["mode"] == "full"
    assert records["02_batchnorm"]["metrics"]["test_accuracy"] == 0.875


def test_a_new_record_replaces_the_old_one(folder: Path) -> None:
    record_metrics("03_activations", "cpu", True, test_accuracy=0.5)
    record_metrics("03_activations", "cpu", True, test_accuracy=0.75)
    assert read_metrics(quick=True)["03_activations"]["metrics"] == {"test_accuracy": 0.75}


def test_execution_times_accumulate_per_notebook(folder: Path) -> None:
    assert read_execution_times(quick=True) == {}
    record_execution_time("01_baseline_cnn", 12.34, quick=True)
    record_execution_time("02_batchnorm", 20.0, quick=True)
    record_execution_time("01_baseline_cnn", 10.0, quick=True)
    assert read_execution_times(quick=True) == {"01_baseline_cnn": 10.0, "02_batchnorm": 20.0}
    assert "execution_times" not in read_metrics(quick=True)


def test_modes_have_their_own_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COURSE_METRICS_DIR", raising=False)
    assert metrics_dir(quick=True).name == "quick"
    assert metrics_dir(quick=False).name == "full"
