"""course_utils.export: scriptable copy, save/load with clear errors, parity, fresh process."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from course_utils.export import (
    ONNX_INPUT,
    ONNX_OUTPUT,
    InvertIfBright,
    LatencyStats,
    ModelFileError,
    export_dir,
    export_model,
    export_onnx,
    load_exported,
    load_onnx,
    load_torchscript,
    make_scriptable,
    max_abs_diff,
    measure_latency,
    run_in_fresh_process,
    run_onnx,
    save_exported,
    save_torchscript,
    sha256_of,
)
from course_utils.models import FashionCNN


@pytest.fixture(scope="module")
def model() -> FashionCNN:
    torch.manual_seed(0)
    return FashionCNN(width=4, hidden=16).eval()


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def script(module: torch.nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's FutureWarning is the chapter's topic
        return torch.jit.script(module)


@pytest.fixture(scope="module")
def files(
    model: FashionCNN, batch: torch.Tensor, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {
        "torchscript": save_torchscript(script(make_scriptable(model)), folder / "model.pt"),
        "export": save_exported(export_model(model, batch), folder / "model.pt2"),
    }


def test_scriptable_copy_has_same_outputs_and_scripts(
    model: FashionCNN, batch: torch.Tensor
) -> None:
    copy = make_scriptable(model)
    assert not copy.training
    assert max_abs_diff(model, copy, batch) == 0.0
    assert max_abs_diff(model, script(copy), batch) <= 1e-6
    with pytest.raises(Exception, match="built for 28×28"):
        script(copy)(torch.zeros(1, 1, 32, 32))


def test_the_course_model_itself_does_not_script(model: FashionCNN) -> None:
    """Why make_scriptable exists: FashionCNN.forward uses tuple() on a shape."""
    with pytest.raises(RuntimeError, match="cannot statically infer"):
        script(model)


def test_saved_files_load_with_parity_and_dynamic_batch(
    model: FashionCNN, files: dict[str, Path]
) -> None:
    assert files["torchscript"].with_name("model.pt.sha256").is_file()
    scripted = load_torchscript(files["torchscript"])
    program = load_exported(files["export"]).module()
    for n in (1, 5, 33):  # 5 is the export example's batch size; 1 and 33 need the dynamic dim
        x = torch.randn(n, 1, 28, 28)
        assert max_abs_diff(model, scripted, x) <= 1e-5
        assert max_abs_diff(model, program, x) <= 1e-5


def test_export_without_dynamic_batch_is_fixed_to_the_example(
    model: FashionCNN, batch: torch.Tensor
) -> None:
    program = export_model(model, batch, dynamic_batch=False).module()
    with pytest.raises(Exception, match="5"):
        program(torch.randn(2, 1, 28, 28))


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "flipped bytes in the weights":
        for i in range(len(data) // 2, len(data) // 2 + 16):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(b"not a model at all\n" * 10)


@pytest.mark.parametrize("how", ["truncated", "flipped bytes in the weights", "empty", "garbage"])
@pytest.mark.parametrize("kind", ["torchscript", "export"])
def test_damaged_file_gives_a_clear_error(
    kind: str, how: str, files: dict[str, Path], tmp_path: Path
) -> None:
    source = files[kind]
    copy = tmp_path / source.name
    copy.write_bytes(source.read_bytes())
    (tmp_path / f"{source.name}.sha256").write_text(
        source.with_name(source.name + ".sha256").read_text()
    )
    damage(copy, how)
    load = load_torchscript if kind == "torchscript" else load_exported
    with pytest.raises(ModelFileError, match="truncated|corrupted|empty|interrupted"):
        load(copy)


@pytest.mark.parametrize("kind", ["torchscript", "export"])
def test_damaged_file_without_checksum_still_gives_a_clear_error(
    kind: str, files: dict[str, Path], tmp_path: Path
) -> None:
    """Without the .sha256, a truncated archive is still caught by the zip reader."""
    copy = tmp_path / files[kind].name
    copy.write_bytes(files[kind].read_bytes()[:1000])
    load = load_torchscript if kind == "torchscript" else load_exported
    with pytest.raises(ModelFileError, match="could not be loaded"):
        load(copy)


def test_missing_file_and_wrong_format(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="does not exist"):
        load_torchscript(tmp_path / "nothing.pt")
    with pytest.raises(ModelFileError, match="does not exist"):
        load_exported(tmp_path / "nothing.pt2")
    with pytest.raises(ModelFileError, match="load_exported"):
        load_torchscript(files["export"])
    with pytest.raises(ModelFileError, match=r"\.pt2"):
        load_exported(files["torchscript"])
    with pytest.raises(ValueError, match=r"\.pt2"):
        save_exported(load_exported(files["export"]), tmp_path / "model.pt")


def test_failed_save_leaves_no_file(tmp_path: Path) -> None:
    def broken(path: Path) -> None:
        path.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_torchscript(type("M", (), {"save": staticmethod(broken)})(), tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["torchscript", "export"])
@pytest.mark.slow
def test_fresh_process_loads_without_the_course_code(
    kind: str, model: FashionCNN, files: dict[str, Path]
) -> None:
    x = torch.randn(3, 1, 28, 28)
    result = run_in_fresh_process(files[kind], x, kind=kind)
    with torch.no_grad():
        assert (result.outputs - model(x)).abs().max() <= 1e-5
    assert "course_utils modules imported by this process: []" in result.stdout
    assert 'sys.modules["course_utils"] = None' in result.script


@pytest.mark.slow
def test_fresh_process_reports_a_failure(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"nope")
    with pytest.raises(RuntimeError, match="fresh process failed"):
        run_in_fresh_process(bad, torch.zeros(1, 1, 28, 28))


def test_trace_bakes_in_one_branch_and_script_does_not(model: FashionCNN) -> None:
    wrapper = InvertIfBright(make_scriptable(model)).eval()
    dark = torch.rand(4, 1, 28, 28) * 0.3
    bright = 1 - dark
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, dark)
    scripted = script(wrapper)
    assert max_abs_diff(wrapper, scripted, bright) <= 1e-5
    assert max_abs_diff(wrapper, traced, dark) <= 1e-5
    assert max_abs_diff(wrapper, traced, bright) > 1e-2  # the trace kept the "dark" branch
    with pytest.raises(Exception, match="data-dependent"):
        torch.export.export(wrapper, (dark,))  # export refuses instead of guessing


def test_measure_latency_reports_median_and_spread() -> None:
    calls = []
    stats = measure_latency(lambda x: calls.append(x), torch.zeros(1), repeats=5, number=3)
    assert isinstance(stats, LatencyStats)
    assert len(calls) == 5 + 5 * 3  # warm-up + timed calls
    assert stats.min_ms <= stats.q25_ms <= stats.median_ms <= stats.q75_ms <= stats.max_ms
    assert stats.iqr_ms >= 0
    slow = measure_latency(lambda x: torch.ones(300, 300) @ torch.ones(300, 300), torch.zeros(1))
    fast = measure_latency(lambda x: None, torch.zeros(1))
    assert slow.median_ms > fast.median_ms
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(lambda x: None, torch.zeros(1), repeats=0)


# --- ONNX -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_file(model: FashionCNN, batch: torch.Tensor, tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("onnxruntime")
    return export_onnx(model, batch, tmp_path_factory.mktemp("onnx") / "model.onnx")


def test_onnx_export_has_a_sidecar_a_dynamic_batch_and_parity(
    model: FashionCNN, onnx_file: Path
) -> None:
    sidecar = onnx_file.with_name("model.onnx.sha256")
    assert sidecar.read_text().split() == [sha256_of(onnx_file), "model.onnx"]
    session = load_onnx(onnx_file, require_sidecar=True)
    (graph_input,) = session.get_inputs()
    assert graph_input.name == ONNX_INPUT and session.get_outputs()[0].name == ONNX_OUTPUT
    assert isinstance(graph_input.shape[0], str) and graph_input.shape[1:] == [1, 28, 28]
    for n in (1, 5, 33):  # 5 is the example's batch size; 1 and 33 need the dynamic dimension
        x = torch.randn(n, 1, 28, 28)
        assert run_onnx(session, x).shape == (n, 10)
        assert max_abs_diff(model, lambda x: run_onnx(session, x), x) <= 1e-4


def test_onnx_file_loads_without_torch_or_the_course(onnx_file: Path, model: FashionCNN) -> None:
    """The deployment story: onnxruntime + numpy alone, in a process that cannot import torch."""
    x = torch.randn(3, 1, 28, 28)
    script = (
        "import sys; sys.modules['torch'] = sys.modules['course_utils'] = None\n"
        "import numpy as np, onnxruntime as ort\n"
        f"s = ort.InferenceSession({str(onnx_file)!r}, providers=['CPUExecutionProvider'])\n"
        f"x = np.array({x.tolist()!r}, dtype=np.float32)\n"
        "print(repr(s.run(None, {s.get_inputs()[0].name: x})[0].tolist()))\n"
    )
    done = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    y = torch.tensor(eval(done.stdout))  # noqa: S307 - our own subprocess's repr of a list
    assert max_abs_diff(model, lambda _: y, x) <= 1e-4


@pytest.mark.parametrize("how", ["truncated", "flipped bytes in the weights", "empty", "garbage"])
def test_damaged_onnx_file_gives_a_clear_error(how: str, onnx_file: Path, tmp_path: Path) -> None:
    copy = tmp_path / onnx_file.name
    copy.write_bytes(onnx_file.read_bytes())
    damage(copy, how)
    if how == "flipped bytes in the weights":
        load_onnx(copy)  # without a sidecar this loads silently: why the sidecar exists
    else:
        with pytest.raises(ModelFileError, match="could not be loaded|interrupted"):
            load_onnx(copy)  # no sidecar: ONNX Runtime's own parser catches it
    Path(f"{copy}.sha256").write_text(Path(f"{onnx_file}.sha256").read_text())
    with pytest.raises(ModelFileError, match="SHA-256|interrupted"):
        load_onnx(copy)


def test_onnx_sidecar_required_and_suffix_checked(
    model: FashionCNN, batch: torch.Tensor, onnx_file: Path, tmp_path: Path
) -> None:
    copy = tmp_path / onnx_file.name
    copy.write_bytes(onnx_file.read_bytes())
    load_onnx(copy)  # accepted unchecked without require_sidecar
    with pytest.raises(ModelFileError, match="no model.onnx.sha256"):
        load_onnx(copy, require_sidecar=True)
    with pytest.raises(ModelFileError, match="does not exist"):
        load_onnx(tmp_path / "nothing.onnx")
    with pytest.raises(ValueError, match=r"\.onnx"):
        export_onnx(model, batch, tmp_path / "model.pt")


def test_export_dir_is_the_checkpoint_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("COURSE_CHECKPOINT_DIR", str(tmp_path))
    assert export_dir() == tmp_path / "08_export"
    assert export_dir(quick=True) == tmp_path / "08_export_quick"
