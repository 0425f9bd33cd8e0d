"""Fashion-MNIST: locate, verify and load it, through a standard DataLoader or a fast tensor loader.

The data lives in torchvision's layout (``<root>/FashionMNIST/raw/``) so that
``torchvision.datasets.FashionMNIST(root)`` works unchanged. :func:`ensure_fashion_mnist` fills that
folder from the first source that works, in this order:

1. the files already in the root (decompressed, or ``.gz`` files placed there by hand);
2. Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist/*.gz``);
3. torchvision's download.

Whatever the source, each decompressed file is checked against the original release's SHA-256 and
written atomically (temporary file, then rename), so a half-written file never passes as data.

Run ``python -m course_utils.data`` to fetch and verify from the command line.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.utils.data import Subset
from torchvision import transforms

from .artefacts import sha256_of
from .fashion_mnist import CLASSES, MEAN, STD
from .paths import REPO_ROOT

__all__ = [
    "CLASSES",
    "DEBIAN_DIR",
    "MEAN",
    "SHA256",
    "STD",
    "ChecksumError",
    "DataUnavailableError",
    "FashionMNISTTensors",
    "TensorLoader",
    "default_data_dir",
    "ensure_fashion_mnist",
    "label_budget",
    "load_tensors",
    "random_indices",
    "standard_transform",
    "torchvision_datasets",
    "train_val_indices",
]

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
SHA256: dict[str, str] = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
FIXES = (
    "Fix it with one of:\n"
    "  * Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist  (then run again), or\n"
    "  * place the four original files (train-images-idx3-ubyte, train-labels-idx1-ubyte,\n"
    "    t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; .gz is fine) in {raw}"
)


class DataUnavailableError(RuntimeError):
    """Fashion-MNIST could not be obtained from any source."""


class ChecksumError(DataUnavailableError):
    """A data file exists but its bytes are not the original release's."""


def default_data_dir() -> Path:
    """The data root: ``$COURSE_DATA_DIR`` if set, else ``data/`` at the repository root (the
    notebook's folder where the course is installed from an archive: see :mod:`.paths`)."""
    if env := os.environ.get("COURSE_DATA_DIR"):
        return Path(env).expanduser()
    return REPO_ROOT / "data"


def _verify(path: Path, name: str | None = None) -> None:
    """Raise :class:`ChecksumError` unless ``path`` holds the original bytes of file ``name``."""
    expected = SHA256[name or path.name]
    actual = sha256_of(path)
    if actual != expected:
        raise ChecksumError(
            f"{path} has the wrong SHA-256 ({actual[:12]}…, expected {expected[:12]}…): "
            "it is truncated or not the original Fashion-MNIST file."
        )


def _decompress_verified(src: Path, dest: Path) -> None:
    """Decompress ``src`` (gz or plain) to ``dest`` atomically, keeping it only if it verifies."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        opener = gzip.open if src.suffix == ".gz" else open
        with os.fdopen(fd, "wb") as out, opener(src, "rb") as inp:
            shutil.copyfileobj(inp, out)
        try:
            _verify(tmp, dest.name)
        except ChecksumError:
            raise ChecksumError(
                f"{src} decompresses to the wrong bytes for {dest.name}: "
                "it is truncated or not the original Fashion-MNIST file."
            ) from None
        tmp.chmod(0o644)
        os.replace(tmp, dest)
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise ChecksumError(f"{src} could not be read: {err}") from err
    finally:
        tmp.unlink(missing_ok=True)


def _missing_or_bad(raw: Path) -> dict[str, str]:
    """Files in ``raw`` that are absent or fail verification, with the reason."""
    problems = {}
    for name in SHA256:
        if not (raw / name).exists():
            problems[name] = "missing"
            continue
        try:
            _verify(raw / name)
        except ChecksumError as err:
            problems[name] = str(err)
    return problems


def _from_directory(src_dir: Path, raw: Path) -> None:
    """Copy each missing file from ``src_dir`` (``name.gz`` or ``name``) into ``raw``."""
    if not src_dir.is_dir():
        raise FileNotFoundError(f"{src_dir} does not exist")
    for name in _missing_or_bad(raw):
        candidates = [src_dir / f"{name}.gz", src_dir / name]
        src = next((c for c in candidates if c.is_file()), None)
        if src is None:
            raise FileNotFoundError(f"{src_dir} has no {name}(.gz)")
        _decompress_verified(src, raw / name)


def _torchvision_download(root: Path) -> None:
    """Download with torchvision into a scratch folder, then verify and move into ``root``."""
    raw = root / "FashionMNIST" / "raw"
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as scratch:
        torchvision.datasets.FashionMNIST(scratch, train=True, download=True)
        torchvision.datasets.FashionMNIST(scratch, train=False, download=True)
        _from_directory(Path(scratch) / "FashionMNIST" / "raw", raw)


def ensure_fashion_mnist(
    root: str | Path | None = None,
    *,
    debian_dir: Path = DEBIAN_DIR,
    download: bool | Callable[[Path], None] = True,
    verbose: bool = False,
) -> Path:
    """Make sure the four verified Fashion-MNIST files are in ``<root>/FashionMNIST/raw``.

    ``root`` defaults to :func:`default_data_dir`; ``debian_dir`` is where Debian's
    ``dataset-fashion-mnist`` puts the ``.gz`` files; ``download`` is ``True`` for torchvision's
    download, ``False`` to skip it, or a callable ``fn(root)`` that fills the root (used by
    tests); ``verbose`` prints which source was used. Returns the root, ready for
    ``torchvision.datasets.FashionMNIST(root)``.

    Raises:
        DataUnavailableError: no source worked; the message names each source and why.
        ChecksumError: a file is present but corrupt, and no source could replace it.
    """
    root = Path(root) if root is not None else default_data_dir()
    raw = root / "FashionMNIST" / "raw"
    problems = _missing_or_bad(raw)
    if not problems:
        if verbose:
            print(f"Fashion-MNIST: all four files present and verified in {raw}")
        return root

    tried = [f"already in {raw}: " + "; ".join(f"{k}: {v}" for k, v in problems.items())]
    downloader = _torchvision_download if download is True else download or None
    sources: list[tuple[str, Callable[[], None]]] = []
    if any(raw.glob("*.gz")):
        sources.append((f"gzipped files in {raw}", lambda: _from_directory(raw, raw)))
    sources.append(
        (f"Debian package files in {debian_dir}", lambda: _from_directory(debian_dir, raw))
    )
    if downloader is not None:
        sources.append(("torchvision download", lambda: downloader(root)))

    for label, fetch in sources:
        try:
            root.mkdir(parents=True, exist_ok=True)
            fetch()
        except Exception as err:  # noqa: BLE001 - every failure is reported, then the next is tried
            tried.append(f"{label}: {type(err).__name__}: {err}")
            continue
        remaining = _missing_or_bad(raw)
        if not remaining:
            if verbose:
                print(f"Fashion-MNIST: obtained from {label}, verified by SHA-256, in {raw}")
            return root
        tried.append(f"{label}: still missing or bad: {', '.join(remaining)}")

    bad = {k: v for k, v in _missing_or_bad(raw).items() if v != "missing"}
    error = ChecksumError if bad else DataUnavailableError
    lines = "\n".join(f"  - {t}" for t in tried)
    message = f"Fashion-MNIST is not available in {raw}.\nSources tried:\n{lines}\n"
    raise error(message + FIXES.format(raw=raw))


def standard_transform() -> transforms.Compose:
    """Chapter 1's per-sample transform: PIL image → float tensor in [0, 1] → normalised."""
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])


def train_val_indices(
    labels: torch.Tensor, val_size: int = 6000, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices of the 60k training set into train/validation, stratified by class.

    Each class gives ``val_size / n_classes`` images to validation, chosen by a seeded permutation,
    so the split is the same on every machine for the same seed.
    """
    labels = torch.as_tensor(labels)
    classes = labels.unique()
    if val_size % len(classes):
        raise ValueError(f"val_size={val_size} must be a multiple of {len(classes)} classes")
    per_class = val_size // len(classes)
    generator = torch.Generator().manual_seed(seed)
    val_parts = []
    for c in classes:
        idx = torch.nonzero(labels == c).flatten()
        val_parts.append(idx[torch.randperm(len(idx), generator=generator)[:per_class]])
    val = torch.cat(val_parts).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[val] = False
    return torch.nonzero(mask).flatten(), val


@dataclass(frozen=True)
class FashionMNISTTensors:
    """One split as raw tensors: ``images`` uint8 ``[N, 28, 28]``, ``labels`` int64 ``[N]``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> FashionMNISTTensors:
        """The rows at ``indices``."""
        return FashionMNISTTensors(self.images[indices], self.labels[indices])

    def random_subset(self, n: int | None, seed: int = 0) -> FashionMNISTTensors:
        """``n`` rows chosen by a permutation seeded with ``seed`` (``None``: all rows, unchanged).

        The same ``n`` and ``seed`` give the same rows on every machine, so quick-mode runs and
        the variants of a comparison all see the same images.
        """
        if n is None or n >= len(self):
            return self
        return self.subset(random_indices(len(self), n, seed))


def random_indices(total: int, n: int | None, seed: int = 0) -> torch.Tensor:
    """``n`` of the indices ``0 … total - 1``, in the order of a permutation seeded with ``seed``
    (``None``, or ``n >= total``: all of them, in order).

    Raises:
        ValueError: ``n`` is negative.
    """
    if n is None or n >= total:
        return torch.arange(total)
    if n < 0:
        raise ValueError(f"n must be at least 0, got {n}")
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]


def label_budget(labels: torch.Tensor, per_class: int | None, seed: int = 0) -> torch.Tensor:
    """Sorted indices of ``per_class`` randomly chosen examples of each class (``None``: all).

    Raises:
        ValueError: a class has fewer than ``per_class`` examples.
    """
    if per_class is None:
        return torch.arange(len(labels))
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < per_class:
            raise ValueError(f"class {c} has {len(idx)} examples, fewer than per_class={per_class}")
        parts.append(idx[torch.randperm(len(idx), generator=generator)[:per_class]])
    return torch.cat(parts).sort().values


def load_tensors(
    root: str | Path | None = None, val_size: int = 6000, seed: int = 0
) -> dict[str, FashionMNISTTensors]:
    """Load ``train``, ``val`` (carved from the 60k training set) and ``test`` as uint8 tensors.

    The test split is returned for the final evaluation only; choose models on ``val``.
    """
    root = ensure_fashion_mnist(root)
    train_full = torchvision.datasets.FashionMNIST(root, train=True)
    test = torchvision.datasets.FashionMNIST(root, train=False)
    full = FashionMNISTTensors(train_full.data, train_full.targets)
    train_idx, val_idx = train_val_indices(full.labels, val_size, seed)
    return {
        "train": full.subset(train_idx),
        "val": full.subset(val_idx),
        "test": FashionMNISTTensors(test.data, test.targets),
    }


def torchvision_datasets(
    root: str | Path | None = None, val_size: int = 6000, seed: int = 0
) -> dict[str, torch.utils.data.Dataset]:
    """The same three splits as :func:`load_tensors`, as torchvision datasets with the standard
    per-sample transform (``Subset`` of the training set for train/val)."""
    root = ensure_fashion_mnist(root)
    transform = standard_transform()
    train_full = torchvision.datasets.FashionMNIST(root, train=True, transform=transform)
    test = torchvision.datasets.FashionMNIST(root, train=False, transform=transform)
    train_idx, val_idx = train_val_indices(train_full.targets, val_size, seed)
    return {
        "train": Subset(train_full, train_idx.tolist()),
        "val": Subset(train_full, val_idx.tolist()),
        "test": test,
    }


class TensorLoader:
    """A fast loader: the whole split lives on the device as one uint8 tensor.

    Each batch is gathered by index, converted to float and normalised on the device, which avoids
    the per-image Python work of a ``Dataset`` + ``DataLoader``. With ``shuffle=True`` the order
    is a fresh ``torch.randperm`` each epoch from a seeded generator, so runs are reproducible.

    ``device`` is where the tensors live and batches are produced; ``seed`` seeds the shuffling
    generator; ``augment`` adds random horizontal flips and ±2-pixel shifts (training only).
    """

    def __init__(
        self,
        data: FashionMNISTTensors,
        batch_size: int = 64,
        *,
        shuffle: bool = False,
        device: str | torch.device = "cpu",
        seed: int = 0,
        augment: bool = False,
        drop_last: bool = False,
    ) -> None:
        self.device = torch.device(device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.augment = augment
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def dataset(self) -> torch.Tensor:
        """The labels tensor, so ``len(loader.dataset)`` works as for a DataLoader."""
        return self.labels

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        flip = torch.rand(n, generator=self.generator) < 0.5
        x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)
        shifts = torch.randint(-2, 3, (2,), generator=self.generator).tolist()
        return torch.roll(x, shifts=shifts, dims=(-2, -1))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = order.to(self.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start : start + self.batch_size]
            x = self.images[idx].unsqueeze(1).float().div_(255).sub_(MEAN).div_(STD)
            if self.augment:
                x = self._augment(x)
            yield x, self.labels[idx]


def _main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Fetch and verify Fashion-MNIST.")
    parser.add_argument("--root", help="data root (default: $COURSE_DATA_DIR or data/)")
    parser.add_argument("--no-download", action="store_true", help="never use the network")
    args = parser.parse_args()
    try:
        root = ensure_fashion_mnist(args.root, download=not args.no_download, verbose=True)
    except DataUnavailableError as err:
        raise SystemExit(f"error: {err}") from None
    splits = load_tensors(root)
    sizes = ", ".join(f"{name} {len(split):,}" for name, split in splits.items())
    counts = np.bincount(splits["train"].labels.numpy(), minlength=len(CLASSES))
    print(f"splits: {sizes}; train images per class: {counts.min()}–{counts.max()}")


if __name__ == "__main__":
    _main()
