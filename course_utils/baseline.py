"""The chapter-1 model for the chapters that start from it (5, 6, 8, 9, 10).

:func:`load_or_train_baseline` loads chapter 1's checkpoint when it exists, and otherwise trains
the baseline with chapter 1's recipe and saves it there, so every notebook still runs on its own.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .data import TensorLoader, load_tensors
from .models import FashionCNN
from .train import (
    bf16_pays,
    checkpoint_path,
    fit,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
)

__all__ = ["BASELINE", "EPOCHS", "load_or_train_baseline"]

BASELINE = "01_baseline_cnn"  # checkpoint name written by chapter 1
EPOCHS = 4  # chapter 1's EPOCHS (a test keeps the two equal)


def load_or_train_baseline(
    quick: bool = False,
    device: str | torch.device = "cpu",
    data_dir: str | Path | None = None,
    seed: int = 0,
    verbose: bool = True,
) -> FashionCNN:
    """Chapter 1's trained ``FashionCNN``, in eval mode on ``device``.

    Quick mode uses (and, if missing, writes) a separate quick checkpoint, trained for one epoch
    on 5,000 images; full mode uses chapter 1's recipe: Adam (lr 2e-3, cosine schedule), batch
    128, :data:`EPOCHS` epochs, with channels_last + bfloat16 autocast where they pay
    (:func:`bf16_pays`, as chapter 1's ``FAST = "auto"``). Chapter 1 trains with its own loop
    and ``DataLoader``; it proves that ``fit`` takes the same steps, so this is the same
    training, fed by the faster ``TensorLoader``.
    """
    device = torch.device(device)
    path = checkpoint_path(BASELINE, quick=quick)
    if not path.exists():
        if verbose:
            print(f"{path.name} not found: training the chapter-1 baseline now")
        seed_everything(seed)
        splits = load_tensors(data_dir, seed=seed)
        train = splits["train"].random_subset(5000 if quick else None, seed=seed)
        epochs = 1 if quick else EPOCHS
        fast = bf16_pays(device)
        model = FashionCNN().to(device)
        if fast:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        batches = TensorLoader(train, 128, shuffle=True, seed=seed, device=device)
        val = TensorLoader(splits["val"], 1000, device=device)
        history = fit(model, batches, val, epochs, optimizer, scheduler, bf16=fast)
        save_checkpoint(model, path, val_accuracy=history.val_acc[-1], epochs=epochs, seed=seed)
    model, meta = load_checkpoint(path)
    if verbose:
        print(f"loaded {path.name} ({meta})")
    return model.to(device).eval()
