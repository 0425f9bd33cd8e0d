"""Unit tests for ``course_utils.train``: seeding, devices, fit/evaluate/predict, checkpoints."""

from __future__ import annotations

import math
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_utils.artefacts import verified
from course_utils.data import MEAN, STD, FashionMNISTTensors, TensorLoader
from course_utils.models import FashionCNN
from course_utils.train import (
    CheckpointError,
    History,
    bf16_pays,
    eval_mode,
    evaluate,
    fit,
    load_checkpoint,
    pick_device,
    predict,
    save_checkpoint,
    seed_everything,
    time_training_steps,
)

# --- seeding and devices ----------------------------------------------------------------------


def test_seed_everything_makes_inits_and_draws_identical() -> None:
    """Breaks if any of torch, NumPy or Python's ``random`` is left unseeded."""

    def draw() -> tuple[dict[str, torch.Tensor], float, float]:
        return FashionCNN().state_dict(), random.random(), float(np.random.rand())

    seed_everything(123)
    first = draw()
    seed_everything(123)
    second = draw()
    seed_everything(124)
    other = draw()
    assert first[0].keys() == second[0].keys()
    assert all(torch.equal(first[0][k], second[0][k]) for k in first[0])
    assert first[1:] == second[1:]
    assert not torch.equal(first[0]["conv1.weight"], other[0]["conv1.weight"])
    assert first[1] != other[1] and first[2] != other[2]


def test_pick_device_explicit_cpu_ignores_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Breaks if an explicit choice is overridden by ``$DEVICE`` (only "auto" is)."""
    monkeypatch.setenv("DEVICE", "meta")
    assert pick_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(
    torch.cuda.is_available() or torch.backends.mps.is_available(), reason="an accelerator exists"
)
def test_pick_device_auto_is_cpu_without_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    """Breaks if "auto" picks a device this machine does not have."""
    monkeypatch.delenv("DEVICE", raising=False)
    assert pick_device("auto") == torch.device("cpu")
    assert pick_device() == torch.device("cpu")


def test_pick_device_env_overrides_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    """Breaks if ``$DEVICE`` is ignored by "auto" (``DEVICE=cpu make book`` would not work)."""
    # "meta" is a device every machine has and "auto" never picks, so the env var must be read.
    monkeypatch.setenv("DEVICE", "meta")
    assert pick_device() == torch.device("meta")
    monkeypatch.setenv("DEVICE", "cpu")
    assert pick_device("auto") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is available")
def test_pick_device_cuda_without_gpu_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """Breaks if asking for a missing GPU fails later, deep inside the first ``.to()``."""
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        pick_device("cuda")
    monkeypatch.setenv("DEVICE", "cuda")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        pick_device()


# --- fit, evaluate, predict -------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_train(fashion_splits: dict[str, FashionMNISTTensors]) -> FashionMNISTTensors:
    """2,000 real training images."""
    return fashion_splits["train"].subset(torch.arange(2000))


@pytest.fixture(scope="module")
def small_val(fashion_splits: dict[str, FashionMNISTTensors]) -> FashionMNISTTensors:
    """1,000 real validation images (all classes: the val indices are sorted, not by class)."""
    return fashion_splits["val"].subset(torch.arange(1000))


def train_small(
    train: FashionMNISTTensors, val: FashionMNISTTensors | None, epochs: int, bf16: bool = False
) -> tuple[FashionCNN, History]:
    """Seeded Adam training of a narrow CNN (width 16: quick on two CPU cores) with dropout."""
    seed_everything(0)
    model = FashionCNN(width=16, hidden=64, dropout=0.25)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    loader = TensorLoader(train, batch_size=64, shuffle=True, seed=0)
    val_loader = TensorLoader(val, batch_size=500) if val is not None else None
    history = fit(model, loader, val_loader, epochs, optimizer, bf16=bf16, progress=False)
    return model, history


@pytest.fixture(scope="module")
def trained(
    small_train: FashionMNISTTensors, small_val: FashionMNISTTensors
) -> tuple[FashionCNN, History]:
    """2 epochs on the 2,000 images, validated on the 1,000 (shared: tests only read it)."""
    return train_small(small_train, small_val, epochs=2)


def test_fit_learns_and_records_history(trained: tuple[FashionCNN, History]) -> None:
    """Breaks if fit does not learn, or the history has the wrong entries."""
    model, history = trained
    n_steps = 2 * math.ceil(2000 / 64)
    assert {k: len(v) for k, v in history.to_dict().items()} == {
        "train_loss": 2,
        "train_acc": 2,
        "val_loss": 2,
        "val_acc": 2,
        "epoch_time": 2,
        "step_loss": n_steps,
    }
    assert all(isinstance(v, float) for values in history.to_dict().values() for v in values)
    assert history.train_loss[1] < history.train_loss[0]
    assert np.mean(history.step_loss[-10:]) < 0.6 * np.mean(history.step_loss[:10])
    assert history.val_acc[-1] > 0.5  # chance is 0.1
    assert all(0 <= a <= 1 for a in history.train_acc + history.val_acc)
    assert all(t > 0 for t in history.epoch_time)
    assert model.training  # fit leaves the model ready to train on
    # The per-epoch train loss is the size-weighted mean of that epoch's step losses.
    steps = n_steps // 2
    sizes = [64] * (steps - 1) + [2000 - 64 * (steps - 1)]
    weighted = np.dot(history.step_loss[:steps], sizes) / 2000
    assert history.train_loss[0] == pytest.approx(weighted, rel=1e-5)


def test_fit_without_val_and_with_bf16(small_train: FashionMNISTTensors) -> None:
    """Breaks if ``bf16=True`` fails, is ignored, or ``val=None`` still records val metrics."""
    subset = small_train.subset(torch.arange(1000))
    _, history_32 = train_small(subset, None, epochs=1)
    model_16, history_16 = train_small(subset, None, epochs=1, bf16=True)
    assert history_16.val_loss == history_16.val_acc == []
    assert len(history_16.train_loss) == 1
    assert len(history_16.step_loss) == len(history_32.step_loss) == math.ceil(1000 / 64)
    assert all(math.isfinite(v) for v in history_16.step_loss)
    # Same seed, same batches: only the bfloat16 autocast can make the losses differ.
    assert history_16.step_loss != history_32.step_loss
    assert np.mean(history_16.step_loss[-4:]) < 0.75 * np.mean(history_16.step_loss[:4])
    assert all(p.dtype == torch.float32 for p in model_16.parameters())  # weights stay fp32


def test_evaluate_matches_hand_written_accuracy_and_restores_mode(
    trained: tuple[FashionCNN, History], small_val: FashionMNISTTensors
) -> None:
    """Breaks if evaluate runs in train mode (dropout on), miscounts, or leaves the mode changed."""
    model, history = trained
    subset = small_val.subset(torch.arange(300))
    x, y = subset.images[:, None].float().div(255).sub(MEAN).div(STD), subset.labels
    model.eval()
    with torch.no_grad():
        logits = model(x)
    expected_acc = (logits.argmax(1) == y).sum().item() / len(y)
    expected_loss = F.cross_entropy(logits, y).item()
    assert expected_acc > 0.5  # a real check: the model is far from constant

    for training in (True, False):
        model.train(training)
        # Uneven batches (128, 128, 44): the mean must be weighted by batch size.
        loss, acc = evaluate(model, TensorLoader(subset, batch_size=128))
        assert model.training is training
        assert acc == expected_acc
        assert loss == pytest.approx(expected_loss, rel=1e-5)
    model.train()

    # fit's last val_acc is evaluate() on the val loader at the end of training.
    _, val_acc = evaluate(model, TensorLoader(small_val, batch_size=500))
    assert val_acc == history.val_acc[-1]

    with pytest.raises(ValueError, match="no batches"):
        evaluate(model, [])


def test_eval_mode_restores_the_previous_mode_even_after_an_exception() -> None:
    """Breaks if eval_mode does not switch every submodule to eval, or does not restore the mode
    it found (train or eval) when the block raises."""
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    for training in (True, False):
        model.train(training)
        with pytest.raises(RuntimeError, match="inside"), eval_mode(model) as inside:
            assert inside is model
            assert not any(m.training for m in model.modules())
            raise RuntimeError("inside the block")
        assert all(m.training is training for m in model.modules())


def test_fit_takes_the_same_steps_as_the_plain_training_loop() -> None:
    """Breaks if fit drifts from chapter 1's loop (zero_grad, forward, loss, backward, step):
    from the same initial weights and batches, both must give identical parameters."""
    generator = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(16, 1, 28, 28, generator=generator), torch.randint(0, 10, (16,)))
        for _ in range(3)
    ]
    seed_everything(0)
    plain = FashionCNN()
    seed_everything(0)
    fitted = FashionCNN()
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
    plain.train()
    for x, y in batches:
        plain_opt.zero_grad()
        F.cross_entropy(plain(x), y).backward()
        plain_opt.step()
    fit(fitted, batches, None, 1, torch.optim.Adam(fitted.parameters(), lr=1e-3), progress=False)
    pairs = list(zip(plain.parameters(), fitted.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in pairs)


def _cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\n")
    return path


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("fpu sse2 avx2 avx512f avx512bw avx512_bf16", True),
        ("fpu sse2 avx2 amx_tile amx_bf16", True),
        ("fpu sse2 avx2 avx512f avx512bw avx512_vnni", False),  # bf16 only emulated
        ("fpu sse2 avx2", False),
    ],
)
def test_bf16_pays_on_a_cpu_only_with_native_bf16(
    tmp_path: Path, flags: str, expected: bool
) -> None:
    """Breaks if bf16_pays says yes on a CPU without avx512_bf16/amx_bf16, or no on one with."""
    assert bf16_pays("cpu", cpuinfo=_cpuinfo(tmp_path, flags)) is expected


def test_bf16_pays_without_cpuinfo_or_on_mps_is_false(tmp_path: Path) -> None:
    """Breaks if an unreadable cpuinfo (macOS, Windows) or an MPS device turns bf16 on."""
    assert bf16_pays("cpu", cpuinfo=tmp_path / "missing") is False
    assert bf16_pays("mps", cpuinfo=_cpuinfo(tmp_path, "avx512_bf16")) is False


@pytest.mark.parametrize(("capability", "expected"), [((8, 0), True), ((7, 5), False)])
def test_bf16_pays_on_cuda_from_compute_capability_8(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], expected: bool
) -> None:
    """Breaks if bf16_pays turns bf16 on for a pre-Ampere GPU (emulated) or off for Ampere+."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert bf16_pays("cuda") is expected


def test_predict_returns_cpu_predictions_in_order(
    trained: tuple[FashionCNN, History], small_val: FashionMNISTTensors
) -> None:
    """Breaks if predict loses examples, reorders labels, uses dropout or returns device tensors."""
    model, _ = trained
    subset = small_val.subset(torch.arange(150))
    model.train()
    preds, labels = predict(model, TensorLoader(subset, batch_size=64))
    assert model.training
    assert preds.shape == labels.shape == (150,)
    assert preds.device.type == labels.device.type == "cpu"
    assert preds.dtype == torch.int64
    assert torch.equal(labels, subset.labels)
    x, _ = next(iter(TensorLoader(subset, batch_size=150)))
    model.eval()
    with torch.no_grad():
        assert torch.equal(preds, model(x).argmax(1))
    model.train()


# --- checkpoints --------------------------------------------------------------------------------


def trained_looking_model(**config: object) -> FashionCNN:
    """A model whose weights and BatchNorm buffers are not the defaults of a fresh one."""
    torch.manual_seed(1)
    model = FashionCNN(**config)
    if config.get("norm") == "batch":
        size = model.input_size
        with torch.no_grad():
            model.train()(torch.randn(8, 1, *size))  # moves the running statistics
    return model.eval()


@pytest.mark.parametrize(
    "config",
    [{}, {"norm": "batch", "dropout": 0.3, "activation": "gelu", "input_size": (40, 29)}],
    ids=["default", "batchnorm-40x29"],
)
@pytest.mark.parametrize("pass_model", [True, False], ids=["into-model", "from-config"])
def test_checkpoint_round_trip_gives_identical_outputs(
    tmp_path: Path, config: dict[str, object], pass_model: bool
) -> None:
    """Breaks if weights, buffers, config or meta are lost between save and load."""
    model = trained_looking_model(**config)
    x = torch.randn(5, 1, *model.input_size)
    with torch.no_grad():
        expected = model(x)
    path = save_checkpoint(model, tmp_path / "sub" / "model.pt", epoch=3, val_acc=0.91)
    assert path == tmp_path / "sub" / "model.pt"

    torch.manual_seed(99)  # a fresh model starts from different weights
    target = FashionCNN(**config) if pass_model else None
    loaded, meta = load_checkpoint(path, target)
    if pass_model:
        assert loaded is target
    assert isinstance(loaded, FashionCNN) and loaded.config == model.config
    assert meta == {"epoch": 3, "val_acc": 0.91}
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), expected)


def test_save_checkpoint_leaves_no_temporary_file(tmp_path: Path) -> None:
    """Breaks if the write-then-rename leaves its temporary file behind, even on failure, or
    writes no SHA-256 sidecar (which the server requires)."""
    path = tmp_path / "model.pt"
    save_checkpoint(FashionCNN(), path)
    save_checkpoint(FashionCNN(width=8), path)  # overwriting works the same way
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "model.pt.sha256"]
    assert verified(path, "checkpoint", require_sidecar=True) == path
    assert load_checkpoint(path)[0].config["width"] == 8

    # meta that pickles but would not load back with weights_only (a NumPy float, as returned by
    # sklearn's metrics) is refused at save time, and the previous file is kept intact.
    with pytest.raises(CheckpointError, match="val_acc"):
        save_checkpoint(FashionCNN(), path, val_acc=np.float64(0.9))
    with pytest.raises((pickle.PicklingError, AttributeError)):  # a lambda does not pickle
        save_checkpoint(FashionCNN(), path, hook=lambda: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "model.pt.sha256"]
    assert load_checkpoint(path)[0].config["width"] == 8


def test_load_checkpoint_checks_the_sidecar_when_there_is_one(tmp_path: Path) -> None:
    """Breaks if a checkpoint changed after saving loads (as garbage weights or torch's error)
    although its sidecar says so, or if an older checkpoint without a sidecar stops loading."""
    path = save_checkpoint(FashionCNN(), tmp_path / "model.pt")
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(blob)
    with pytest.raises(CheckpointError, match="does not match its recorded SHA-256") as info:
        load_checkpoint(path)
    assert "save it again" in str(info.value)
    path.with_name("model.pt.sha256").write_text("")
    with pytest.raises(CheckpointError, match="malformed"):
        load_checkpoint(path)

    old = save_checkpoint(FashionCNN(width=8), tmp_path / "old.pt")
    old.with_name("old.pt.sha256").unlink()  # as saved before checkpoints had sidecars
    assert load_checkpoint(old)[0].config["width"] == 8


@pytest.mark.parametrize(
    ("config", "differences"),
    [
        ({"width": 16}, ["shape of conv1.weight: file (32, 1, 3, 3) vs model (16, 1, 3, 3)"]),
        ({"norm": "batch"}, ["missing in file: bn1.weight", "'norm': 'none'"]),
        ({"input_size": 32}, ["shape of fc1.weight: file (128, 3136) vs model (128, 4096)"]),
    ],
    ids=["width", "norm", "input_size"],
)
def test_mismatched_architecture_lists_the_differences(
    tmp_path: Path, config: dict[str, object], differences: list[str]
) -> None:
    """Breaks if a mismatch loads partially, or fails with torch's unreadable error instead."""
    path = save_checkpoint(FashionCNN(), tmp_path / "model.pt")
    target = FashionCNN(**config)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError, match="does not match this model's architecture") as info:
        load_checkpoint(path, target)
    for difference in differences:
        assert difference in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())  # untouched


def test_truncated_or_random_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    """Breaks if a damaged file surfaces as torch's internal error or as garbage weights."""
    good = save_checkpoint(FashionCNN(), tmp_path / "good.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good[: len(good) // 2])
    noise = tmp_path / "noise.pt"
    noise.write_bytes(os.urandom(len(good)))
    for path in (truncated, noise):
        with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
            load_checkpoint(path)
        assert str(path) in str(info.value)


def test_missing_or_foreign_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    """Breaks if a missing file, a non-course file or a config-less file is not explained."""
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a course checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    plain = nn.Linear(2, 2)  # no .config: loading needs the model passed in
    save_checkpoint(plain, tmp_path / "linear.pt")
    with pytest.raises(CheckpointError, match="no model config"):
        load_checkpoint(tmp_path / "linear.pt")
    loaded, meta = load_checkpoint(tmp_path / "linear.pt", nn.Linear(2, 2))
    assert torch.equal(loaded.weight, plain.weight) and meta == {}


class _Exploit:
    """Unpickling this runs ``os.mkdir(marker)``: what a malicious checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def test_load_uses_weights_only_and_refuses_pickled_code(tmp_path: Path) -> None:
    """Breaks if checkpoints are unpickled with ``weights_only=False`` (arbitrary code runs)."""
    marker = tmp_path / "code-ran"
    model = FashionCNN()
    payload = {"state_dict": model.state_dict(), "config": model.config, "meta": {}}
    payload["meta"]["x"] = _Exploit(marker)
    torch.save(payload, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="could not be read"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_time_training_steps_stops_at_max_seconds_and_still_gives_a_rate() -> None:
    """A slow variant is timed over fewer batches, not skipped: the rate counts what ran."""
    import time as clock

    ran = []

    def slow_batches():
        while True:
            clock.sleep(0.05)
            ran.append(1)
            yield torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long)

    model = FashionCNN(width=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    rate = time_training_steps(model, optimizer, slow_batches(), 1000, warmup=1, max_seconds=0.3)
    assert 1 + 3 <= len(ran) <= 1 + 20  # stopped near 0.3 s, far before 1,000 batches
    assert 0 < rate <= 4 / 0.05
    with pytest.raises(ValueError, match="need at least"):
        time_training_steps(
            model, optimizer, [(torch.zeros(4, 1, 28, 28), torch.zeros(4).long())], 5
        )
