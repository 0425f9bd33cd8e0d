"""``course_utils.metrics`` and ``course_utils.build.results``: chapters' metrics and execution
times round-trip through JSON, one folder per mode, in a temporary ``$COURSE_METRICS_DIR``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from course_utils.build.results import (
    format_headline,
    format_metric,
    headlines_of,
    metric_label,
    read_execution_times,
    read_metrics,
    record_execution_time,
)
from course_utils.metrics import Headline, metrics_dir, record_metrics


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


def test_headlines_round_trip_through_json(folder: Path) -> None:
    headlines = [
        Headline.percent("test accuracy", 0.9224),
        Headline.points("BatchNorm vs none", 0.047, note="beyond noise"),
        Headline("p99 latency", 15.2, "ms", ".0f"),
    ]
    record_metrics("02_batchnorm", "cpu", False, headlines=headlines, test_accuracy=0.9224)
    record = read_metrics(quick=False)["02_batchnorm"]
    assert headlines_of(record) == headlines
    assert record["metrics"] == {"test_accuracy": 0.9224}, "headlines are not raw metrics"


def test_an_old_record_without_headlines_still_reads(folder: Path) -> None:
    old = {"chapter": "01_baseline_cnn", "device": "cpu", "mode": "full", "torch": "2.0",
           "machine": "x86_64", "written": "2026-01-01T00:00:00+00:00",
           "metrics": {"test_accuracy": 0.91, "epochs": 6}}  # fmt: skip
    (folder / "01_baseline_cnn.json").write_text(json.dumps(old))
    record = read_metrics(quick=False)["01_baseline_cnn"]
    assert headlines_of(record) == []
    assert [metric_label(k) for k in record["metrics"]] == ["Test accuracy", "Epochs"]
    assert format_metric("test_accuracy", 0.91) == "91.0%"


def test_format_headline_reads_like_the_page() -> None:
    assert format_headline(Headline.percent("test accuracy", 0.9224)) == "92.2%"
    diff = Headline.points("BatchNorm vs none", 0.0471, note="beyond noise")
    assert format_headline(diff) == "+4.7 points (beyond noise)"
    assert format_headline(Headline.points("gap", -0.017)) == "-1.7 points"
    assert format_headline(Headline("p99 latency", 15.2, "ms", ".0f")) == "15 ms"
    assert format_headline(Headline("loading", 1.28, "×", ".2f")) == "1.28×"


def test_metric_labels_and_values_are_for_readers() -> None:
    assert metric_label("test_accuracy_bn_std") == "Test accuracy BatchNorm s.d."
    assert metric_label("bench_p99_ms") == "Bench p99 (ms)"
    assert metric_label("images_per_s") == "Images per second"
    assert format_metric("test_accuracy_std", 0.0065) == "0.7 points"
    assert format_metric("final_gap_mean", 0.077) == "7.7 points"
    assert format_metric("loader_images_per_s", 12277.03) == "12,277"
    assert format_metric("seconds_per_epoch", 9.33736) == "9.34"
    assert format_metric("beyond_noise", True) == "yes"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("", 1.0), ValueError),
        (("accuracy", "92%"), TypeError),
        (("accuracy", True), TypeError),
        (("accuracy", float("nan")), ValueError),
        (("accuracy", 0.9, "%", ".1q"), ValueError),
    ],
)
def test_a_bad_headline_is_refused_clearly(args: tuple, error: type[Exception]) -> None:
    with pytest.raises(error, match="Headline"):
        Headline(*args)


def test_record_metrics_refuses_headlines_that_are_not_headline_objects(folder: Path) -> None:
    with pytest.raises(TypeError, match="Headline"):
        record_metrics("01_baseline_cnn", "cpu", True, headlines=[("accuracy", 0.9)])


def run_results_page(out_dir: Path, quick: bool) -> tuple[list, str]:
    """Execute book/results.ipynb with papermill; its outputs and their HTML/Markdown text."""
    import nbformat
    import papermill

    from course_utils.paths import REPO_ROOT

    out = out_dir / "results.ipynb"
    papermill.execute_notebook(
        str(REPO_ROOT / "book" / "results.ipynb"),
        str(out),
        parameters={"QUICK": quick},
        kernel_name="python3",
        progress_bar=False,
    )
    outputs = [o for c in nbformat.read(out, as_version=4).cells for o in c.get("outputs", [])]
    text = "\n".join(
        str(o.get("data", {}).get(kind, ""))
        for o in outputs
        for kind in ("text/html", "text/markdown")
    )
    return outputs, text


@pytest.mark.slow
def test_the_results_page_renders_old_and_new_records_and_flags_a_smoke_run(
    folder: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The book page itself, on one record with headlines and one older record without."""
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend draws
    record_metrics(
        "02_batchnorm",
        "cpu",
        True,
        headlines=[Headline.points("BatchNorm vs none", 0.047, note="beyond noise")],
        test_accuracy_bn_mean=0.9,
    )
    old = {"chapter": "01_baseline_cnn", "device": "cpu", "mode": "quick", "torch": "2.0",
           "machine": "x86_64", "written": "2026-01-01T00:00:00+00:00",
           "metrics": {"test_accuracy": 0.9224, "epochs": 6}}  # fmt: skip
    (folder / "01_baseline_cnn.json").write_text(json.dumps(old))
    record_execution_time("01_baseline_cnn", 12.0, quick=True)
    outputs, text = run_results_page(tmp_path_factory.mktemp("page"), quick=True)
    assert not [o for o in outputs if o.output_type == "error"]
    assert "Smoke run: these numbers are not results" in text
    assert "+4.7 points (beyond noise)" in text and "92.2%" in text
    assert "test_accuracy_bn_mean" not in text and "Test accuracy BatchNorm mean" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2, "two figures"


@pytest.mark.slow
def test_a_full_build_says_which_machine_built_it_and_when(
    folder: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The published site is a full build: its results page names the processor, the threads,
    the device and the time of the records, and shows no smoke-run warning."""
    from course_utils.metrics import processor_name

    monkeypatch.delenv("MPLBACKEND", raising=False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # a chapter run on one thread, and one on two
        record_metrics("02_batchnorm", "cpu", False, test_accuracy=0.86)
        torch.set_num_threads(2)
        path = record_metrics("01_baseline_cnn", "cpu", False, test_accuracy=0.92)
    finally:
        torch.set_num_threads(threads)
    record = json.loads(path.read_text())
    assert record["processor"] == processor_name() and record["threads"] == 2
    outputs, text = run_results_page(tmp_path_factory.mktemp("page"), quick=False)
    assert not [o for o in outputs if o.output_type == "error"]
    assert "Full build" in text and "Smoke run" not in text
    assert f"{record['processor']}, 2 threads (device cpu)" in text
    assert f"{record['processor']}, 1 thread (device cpu)" in text
    assert f"recorded {record['written'][:16].replace('T', ' ')} UTC" in text
