"""Training and evaluation: seeding, device choice, ``fit``/``evaluate``/``predict``, checkpoints.

The loops are deliberately short so a learner can read them: these are chapter 1's loops, the
original cheat sheet's with its slips fixed (validation split, ``model.eval()`` +
``torch.no_grad()`` for evaluation, ``argmax`` instead of ``torch.max(outputs.data, 1)``).
"""

from __future__ import annotations

import os
import pickle
import random
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .artefacts import ModelFileError, save_atomically, verified
from .models import FashionCNN
from .paths import REPO_ROOT

__all__ = [
    "CheckpointError",
    "History",
    "bf16_pays",
    "checkpoint_path",
    "eval_mode",
    "evaluate",
    "fit",
    "load_checkpoint",
    "pick_device",
    "predict",
    "save_checkpoint",
    "seed_everything",
    "time_training_steps",
]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and PyTorch (CPU and all GPUs)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(preference: str = "auto") -> torch.device:
    """The device to use: ``"auto"`` picks cuda → mps → cpu; anything else is taken as given.

    ``$DEVICE`` overrides ``"auto"``, so ``DEVICE=cpu make book`` works without editing notebooks.
    """
    if preference == "auto":
        preference = os.environ.get("DEVICE", "auto")
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("DEVICE='cuda' was requested but no CUDA GPU is visible; use 'auto'.")
    return device


NATIVE_BF16_CPU_FLAGS: frozenset[str] = frozenset({"avx512_bf16", "amx_bf16"})


def bf16_pays(device: str | torch.device, cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether bfloat16 autocast (with ``channels_last``) is likely to speed training up here.

    True on a CUDA GPU with native bf16 (compute capability 8.0 or newer) and on a CPU whose
    ``cpuinfo`` flags include ``avx512_bf16`` or ``amx_bf16``; False elsewhere (MPS, older
    CPUs, or no readable ``cpuinfo``), where bf16 is emulated and usually costs time.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    if device.type != "cpu":
        return False
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = [line.partition(":")[2] for line in text.splitlines() if line.startswith("flags")]
    return bool(set(" ".join(flags).split()) & NATIVE_BF16_CPU_FLAGS)


@dataclass
class History:
    """What ``fit`` measured: one entry per epoch (``step_loss``: one per batch)."""

    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    epoch_time: list[float] = field(default_factory=list)
    step_loss: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, list[float]]:
        """Plain lists, ready for JSON or ``pandas.DataFrame``."""
        return asdict(self)

    def table(self) -> pd.DataFrame:
        """One row per epoch (the per-step losses left out), indexed from 1."""
        epochs = {k: v for k, v in self.to_dict().items() if k != "step_loss" and v}
        frame = pd.DataFrame(epochs)
        frame.index = pd.RangeIndex(1, len(frame) + 1, name="epoch")
        return frame


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for a ``with`` block; restore its previous mode afterwards,
    also when the block raises."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def evaluate(
    model: nn.Module, batches: Batches, loss_fn: nn.Module | None = None
) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` over ``batches``, in eval mode without gradients.

    The model's train/eval mode is restored afterwards.
    """
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    device = _model_device(model)
    total_loss, correct, count = 0.0, 0, 0
    with eval_mode(model), torch.no_grad():
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            total_loss += loss_fn(logits, y).item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            count += len(y)
    if count == 0:
        raise ValueError("evaluate() got no batches")
    return total_loss / count, correct / count


def predict(model: nn.Module, batches: Batches) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted class and true label for every example, as two CPU tensors."""
    device = _model_device(model)
    preds, labels = [], []
    with eval_mode(model), torch.no_grad():
        for x, y in batches:
            preds.append(model(x.to(device)).argmax(1).cpu())
            labels.append(y.cpu())
    return torch.cat(preds), torch.cat(labels)


def fit(
    model: nn.Module,
    train: Batches,
    val: Batches | None,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    *,
    loss_fn: nn.Module | None = None,
    bf16: bool = False,
    progress: bool = True,
    desc: str = "training",
) -> History:
    """Train ``model`` for ``epochs`` passes over ``train``, validating after each epoch.

    The scheduler, if any, steps once per epoch. Training accuracy is measured on the fly (on
    the batches as the model changes), which is cheaper than a second pass and good enough to
    compare with validation accuracy. ``bf16=True`` runs the forward pass under bfloat16 autocast
    (about 1.5× faster on CPUs with AVX-512 BF16 and on recent GPUs; weights stay float32).

    Returns:
        A :class:`History` of per-epoch losses, accuracies and wall times.
    """
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    device = _model_device(model)
    history = History()
    # $TQDM_DISABLE is set by the book build: a progress bar means nothing on a static page.
    # (tqdm's notebook bar ignores that variable, so it is read here.)
    disable = not progress or os.environ.get("TQDM_DISABLE", "0") not in ("", "0")
    bar = tqdm(total=epochs * len(train), desc=desc, unit="batch", disable=disable)
    for epoch in range(epochs):
        model.train()
        start = time.perf_counter()
        total_loss = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        count = 0
        for x, y in train:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
                loss = loss_fn(logits, y)
            loss.backward()
            optimizer.step()
            # Accumulate on the device: calling .item() every step would force a GPU sync.
            total_loss += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            count += len(y)
            history.step_loss.append(loss.detach())
            bar.update()
        if scheduler is not None:
            scheduler.step()
        history.train_loss.append(total_loss.item() / count)
        history.train_acc.append(correct.item() / count)
        history.epoch_time.append(time.perf_counter() - start)
        postfix = {"train_acc": f"{history.train_acc[-1]:.3f}"}
        if val is not None:
            val_loss, val_acc = evaluate(model, val, loss_fn)
            history.val_loss.append(val_loss)
            history.val_acc.append(val_acc)
            postfix["val_acc"] = f"{val_acc:.3f}"
        bar.set_postfix(epoch=epoch + 1, **postfix)
    bar.close()
    history.step_loss = torch.stack(history.step_loss).tolist() if history.step_loss else []
    return history


def time_training_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    n_batches: int,
    *,
    bf16: bool = False,
    warmup: int = 3,
    max_seconds: float | None = None,
) -> float:
    """Images per second of training steps (loading included) over ``n_batches`` batches.

    The first ``warmup`` batches are run but not timed (one-off allocations, kernel selection).
    ``max_seconds``: stop timing earlier, once this long has passed (a slow variant, such as
    emulated bfloat16, still gets a rate, from fewer batches).
    """
    device = _model_device(model)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    images, start = 0, time.perf_counter()
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            sync()
            images, start = 0, time.perf_counter()
        if i == warmup + n_batches or (
            i > warmup and max_seconds is not None and time.perf_counter() - start > max_seconds
        ):
            break
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        images += len(y)
    else:
        raise ValueError(f"need at least {warmup + n_batches} batches to time {n_batches}")
    sync()
    return images / (time.perf_counter() - start)


def checkpoint_path(name: str, quick: bool = False) -> Path:
    """Where chapter checkpoints live: ``$COURSE_CHECKPOINT_DIR`` or ``checkpoints/`` at the
    repository root; quick-mode runs get their own file so they never replace a full-mode one."""
    folder = os.environ.get("COURSE_CHECKPOINT_DIR")
    root = Path(folder) if folder else REPO_ROOT / "checkpoints"
    return root / f"{name}{'_quick' if quick else ''}.pt"


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable, or does not fit the model it is loaded into."""


def save_checkpoint(model: nn.Module, path: str | Path, **meta: Any) -> Path:
    """Save the weights (``state_dict``), the model's ``config`` if it has one, and ``meta``.

    The file holds only tensors and plain Python values, so it loads with ``weights_only=True``.
    It is written atomically with its SHA-256 in ``<path>.sha256`` (``artefacts.save_atomically``):
    a crash never leaves half a file, and a later change to the file is detected.
    """
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": getattr(model, "config", None),
        "meta": meta,
    }

    def write(tmp: Path) -> None:
        torch.save(payload, tmp)
        try:  # refuse now what load_checkpoint would refuse later, e.g. a NumPy float in meta
            torch.load(tmp, weights_only=True)
        except pickle.UnpicklingError as err:
            detail = str(err).split("WeightsUnpickler error: ")[-1].split(". Please")[0]
            raise CheckpointError(
                f"meta {sorted(meta)} holds a value that weights_only loading refuses ({detail}); "
                "pass plain Python values (e.g. float(x)) or tensors"
            ) from None

    return save_atomically(write, path)


def load_checkpoint(
    path: str | Path, model: nn.Module | None = None, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint made by :func:`save_checkpoint` (safely, with ``weights_only=True``),
    after checking it against its ``.sha256`` if it has one (older files without one load too).

    Returns ``(model, meta)``; with ``model=None``, a :class:`FashionCNN` is built from the stored
    config.

    Raises:
        CheckpointError: the file is missing, corrupt, does not match its ``.sha256``, is not a
            course checkpoint, or its weights do not match the model's architecture (the message
            lists the differences).
    """
    path = Path(path)
    try:
        payload = torch.load(
            verified(path, "checkpoint"), map_location=map_location, weights_only=True
        )
    except ModelFileError as err:
        raise CheckpointError(str(err)) from None
    except Exception as err:  # noqa: BLE001 - torch raises many types for a damaged file
        raise CheckpointError(
            f"checkpoint {path} could not be read ({type(err).__name__}: {err}); "
            "it is corrupt or truncated: delete it and save it again"
        ) from err
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise CheckpointError(f"{path} is not a course checkpoint (no 'state_dict' entry)")
    if model is None:
        if not payload.get("config"):
            raise CheckpointError(f"{path} stores no model config; pass the model to load into")
        model = FashionCNN(**payload["config"])
    expected = model.state_dict()
    stored = payload["state_dict"]
    problems = [f"missing in file: {k}" for k in expected if k not in stored]
    problems += [f"unexpected in file: {k}" for k in stored if k not in expected]
    problems += [
        f"shape of {k}: file {tuple(stored[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in stored and stored[k].shape != v.shape
    ]
    if problems:
        shown = "\n  ".join(problems[:10]) + ("\n  …" if len(problems) > 10 else "")
        raise CheckpointError(
            f"checkpoint {path} does not match this model's architecture "
            f"(file config: {payload.get('config')}):\n  {shown}"
        )
    model.load_state_dict(stored)
    return model, payload.get("meta", {})
