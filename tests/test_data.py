"""Unit tests for ``course_utils.data``: sources, verification, atomic writes, splits, loaders.

Failure paths run in ``tmp_path`` roots with an injected downloader, so no test touches the
network; the speed-critical tests share the real data through the session fixtures.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import itertools
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from torch.utils.data import DataLoader, RandomSampler

from course_utils import data
from course_utils.data import (
    CLASSES,
    MEAN,
    STD,
    ChecksumError,
    DataUnavailableError,
    FashionMNISTTensors,
    TensorLoader,
    default_data_dir,
    ensure_fashion_mnist,
    load_tensors,
    random_indices,
    torchvision_datasets,
    train_val_indices,
)

# The original release's SHA-256 (COURSE_GUIDE.md, section 4), kept apart from data.SHA256 so
# that an edit to the module's table cannot make a wrong file pass.
ORIGINAL_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
FIX_APT = "apt-get install dataset-fashion-mnist"
FIX_PLACE = "place the four original files"


@pytest.fixture(scope="session")
def debian_dir() -> Path:
    """Debian's ``dataset-fashion-mnist`` folder (skips where the package is not installed)."""
    if not all((data.DEBIAN_DIR / f"{name}.gz").is_file() for name in ORIGINAL_SHA256):
        pytest.skip(f"Debian's dataset-fashion-mnist is not installed in {data.DEBIAN_DIR}")
    return data.DEBIAN_DIR


@pytest.fixture
def no_debian(tmp_path: Path) -> Path:
    """A Debian folder that does not exist."""
    return tmp_path / "no-debian"


class FailingDownload:
    """An injected downloader that records its calls and fails like a machine with no network."""

    def __init__(self) -> None:
        self.calls: list[Path] = []

    def __call__(self, root: Path) -> None:
        self.calls.append(root)
        raise ConnectionError("injected: no network")


def raw_dir(root: Path) -> Path:
    return root / "FashionMNIST" / "raw"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_real_files(real_root: Path, root: Path) -> Path:
    """Copy the four verified files into ``root``'s raw folder (copies, so the real stay intact)."""
    raw = raw_dir(root)
    raw.mkdir(parents=True)
    for name in ORIGINAL_SHA256:
        shutil.copyfile(raw_dir(real_root) / name, raw / name)
    return raw


def all_files(root: Path) -> set[str]:
    """Every file under ``root`` (hidden ones included), relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


def assert_four_verified_files_only(root: Path) -> None:
    """The root holds exactly the four original files: nothing half-written, no temp folder."""
    raw = raw_dir(root)
    assert all_files(root) == {f"FashionMNIST/raw/{name}" for name in ORIGINAL_SHA256}
    assert {p for p in root.rglob("*") if p.is_dir()} == {root / "FashionMNIST", raw}
    for name, expected in ORIGINAL_SHA256.items():
        assert sha256(raw / name) == expected, name


# --- sources, verification, atomic writes -----------------------------------------------------


@pytest.mark.parametrize("download", [False, "failing"], ids=["no-download", "failing-download"])
def test_no_source_names_each_source_and_both_fixes(
    tmp_path: Path, no_debian: Path, download: bool | str
) -> None:
    """Breaks if the error hides a source it tried, or leaves out one of the two fixes."""
    root = tmp_path / "missing-root"
    downloader = FailingDownload() if download == "failing" else False
    with pytest.raises(DataUnavailableError) as info:
        ensure_fashion_mnist(root, debian_dir=no_debian, download=downloader)
    assert type(info.value) is DataUnavailableError  # nothing corrupt: not a ChecksumError
    message = str(info.value)
    assert f"already in {raw_dir(root)}" in message
    assert f"Debian package files in {no_debian}" in message
    assert FIX_APT in message
    assert FIX_PLACE in message
    for name in ORIGINAL_SHA256:
        assert name in message
    if downloader:
        assert downloader.calls == [root]
        assert "torchvision download" in message
        assert "injected: no network" in message
    else:
        assert "torchvision download" not in message


def test_truncated_file_is_replaced_from_debian(
    fashion_root: Path, tmp_path: Path, debian_dir: Path
) -> None:
    """Breaks if a truncated file in the root passes as data or is not repaired from Debian."""
    root = tmp_path / "root"
    raw = copy_real_files(fashion_root, root)
    name = "train-labels-idx1-ubyte"
    original = (raw / name).read_bytes()
    (raw / name).write_bytes(original[: len(original) // 2])

    downloader = FailingDownload()
    assert ensure_fashion_mnist(root, debian_dir=debian_dir, download=downloader) == root
    assert (raw / name).read_bytes() == original
    assert downloader.calls == []
    assert_four_verified_files_only(root)


def test_truncated_file_without_debian_raises_checksum_error_naming_it(
    fashion_root: Path, tmp_path: Path, no_debian: Path
) -> None:
    """Breaks if a truncated file is accepted, or the error does not say which file is wrong."""
    root = tmp_path / "root"
    raw = copy_real_files(fashion_root, root)
    name = "t10k-images-idx3-ubyte"
    with (raw / name).open("r+b") as f:
        f.truncate(1000)
    with pytest.raises(ChecksumError) as info:
        ensure_fashion_mnist(root, debian_dir=no_debian, download=False)
    message = str(info.value)
    assert f"{raw / name} has the wrong SHA-256" in message
    assert FIX_APT in message and FIX_PLACE in message


def flip_one_byte(path: Path, offset: int) -> None:
    """Invert one byte in place: same length, wrong content."""
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_flipped_byte_is_reported_by_name_and_never_loaded(
    fashion_root: Path, tmp_path: Path, no_debian: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Breaks if verification only checks sizes, or ``load_tensors`` returns corrupt data."""
    root = tmp_path / "root"
    raw = copy_real_files(fashion_root, root)
    name = "train-labels-idx1-ubyte"
    size = (raw / name).stat().st_size
    flip_one_byte(raw / name, 5000)
    assert (raw / name).stat().st_size == size

    with pytest.raises(ChecksumError, match=name) as info:
        ensure_fashion_mnist(root, debian_dir=no_debian, download=False)
    assert "wrong SHA-256" in str(info.value)
    # The other three files are fine, so the error must name only the corrupt one as bad.
    for other in set(ORIGINAL_SHA256) - {name}:
        assert f"{other}: " not in str(info.value)

    # load_tensors has no source to repair from either: it must raise, not return the data.
    downloader = FailingDownload()
    strict = functools.partial(ensure_fashion_mnist, debian_dir=no_debian, download=downloader)
    monkeypatch.setattr(data, "ensure_fashion_mnist", strict)
    with pytest.raises(ChecksumError, match=name):
        load_tensors(root)
    assert downloader.calls == [root]


def test_happy_path_from_debian_writes_four_verified_files(
    tmp_path: Path, debian_dir: Path
) -> None:
    """Breaks if Debian's copy is not used, a file is not verified, or temp files are left."""
    root = tmp_path / "root"
    downloader = FailingDownload()
    assert ensure_fashion_mnist(root, debian_dir=debian_dir, download=downloader) == root
    assert downloader.calls == []
    assert_four_verified_files_only(root)
    # A second call finds everything in place and uses no source at all.
    assert ensure_fashion_mnist(root, debian_dir=tmp_path / "gone", download=False) == root


def test_gz_files_placed_in_the_root_are_decompressed(
    tmp_path: Path, debian_dir: Path, no_debian: Path
) -> None:
    """Breaks if ``.gz`` files a learner copied into the raw folder are ignored (the error
    message tells learners that .gz is fine there)."""
    root = tmp_path / "root"
    raw_dir(root).mkdir(parents=True)
    for name in ORIGINAL_SHA256:
        shutil.copy(debian_dir / f"{name}.gz", raw_dir(root) / f"{name}.gz")
    assert ensure_fashion_mnist(root, debian_dir=no_debian, download=False) == root
    for name, expected in ORIGINAL_SHA256.items():
        assert sha256(raw_dir(root) / name) == expected, name


def truncated_gz(debian: Path, name: str) -> bytes:
    """The first MiB of Debian's real ``.gz``: it decompresses a while, then ends early."""
    with (debian / f"{name}.gz").open("rb") as f:
        return f.read(1 << 20)


BROKEN_GZ: dict[str, tuple[Callable[[Path, str], bytes], str]] = {
    "truncated": (truncated_gz, "could not be read"),
    "not-gzip": (lambda _debian, _name: b"this is not a gzip file" * 100, "could not be read"),
    "wrong-content": (
        lambda _debian, _name: gzip.compress(bytes(47040016)),
        "decompresses to the wrong bytes",
    ),
}


@pytest.mark.parametrize("kind", list(BROKEN_GZ))
def test_broken_debian_gz_leaves_nothing_half_written(
    tmp_path: Path, debian_dir: Path, kind: str
) -> None:
    """Breaks if a failed decompression leaves a ``.part`` file or a wrong file in the root."""
    make_bytes, expected = BROKEN_GZ[kind]
    name = "train-images-idx3-ubyte"  # the first file fetched, so the failure happens first
    fake = tmp_path / "fake-debian"
    fake.mkdir()
    (fake / f"{name}.gz").write_bytes(make_bytes(debian_dir, name))
    root = tmp_path / "root"

    with pytest.raises(DataUnavailableError) as info:
        ensure_fashion_mnist(root, debian_dir=fake, download=False)
    assert expected in str(info.value)
    assert str(fake / f"{name}.gz") in str(info.value)
    assert all_files(root) == set()  # not even a hidden .part file
    assert not (raw_dir(root) / name).exists()


def test_injected_download_is_used_after_debian_fails(
    fashion_root: Path, tmp_path: Path, no_debian: Path
) -> None:
    """Breaks if the download is skipped after Debian fails, or its files are not verified."""
    calls: list[Path] = []

    def fake_download(root: Path) -> None:
        calls.append(root)
        copy_real_files(fashion_root, root)

    root = tmp_path / "root"
    assert ensure_fashion_mnist(root, debian_dir=no_debian, download=fake_download) == root
    assert calls == [root]
    assert_four_verified_files_only(root)


def test_injected_download_with_wrong_bytes_is_rejected(
    fashion_root: Path, tmp_path: Path, no_debian: Path
) -> None:
    """Breaks if whatever a downloader writes is trusted without checking the SHA-256."""

    def bad_download(root: Path) -> None:
        raw = copy_real_files(fashion_root, root)
        flip_one_byte(raw / "t10k-images-idx3-ubyte", 100_000)

    root = tmp_path / "root"
    with pytest.raises(ChecksumError) as info:
        ensure_fashion_mnist(root, debian_dir=no_debian, download=bad_download)
    assert "torchvision download: still missing or bad: t10k-images-idx3-ubyte" in str(info.value)


def test_course_data_dir_overrides_default(
    tmp_path: Path, no_debian: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Breaks if ``$COURSE_DATA_DIR`` is ignored by ``default_data_dir`` or by the loaders."""
    monkeypatch.delenv("COURSE_DATA_DIR", raising=False)
    repo_default = default_data_dir()
    assert repo_default.name == "data"
    assert (repo_default.parent / "pyproject.toml").is_file()

    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "elsewhere"))
    assert default_data_dir() == tmp_path / "elsewhere"
    with pytest.raises(DataUnavailableError, match="elsewhere"):
        ensure_fashion_mnist(debian_dir=no_debian, download=False)

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("COURSE_DATA_DIR", "~/fm")
    assert default_data_dir() == tmp_path / "fm"


# --- the real data: splits and constants ------------------------------------------------------


@pytest.fixture(scope="module")
def train_labels(fashion_root: Path) -> torch.Tensor:
    """The labels of the full 60k training set."""
    return torchvision.datasets.FashionMNIST(fashion_root, train=True).targets


def test_train_val_indices_are_a_stratified_reproducible_partition(
    train_labels: torch.Tensor,
) -> None:
    """Breaks if the split overlaps, drops images, is not stratified or not seeded."""
    train, val = train_val_indices(train_labels, val_size=6000, seed=0)
    assert len(train) == 54_000 and len(val) == 6_000
    assert not set(train.tolist()) & set(val.tolist())
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(60_000))
    assert torch.bincount(train_labels[val], minlength=10).tolist() == [600] * 10
    assert torch.bincount(train_labels[train], minlength=10).tolist() == [5400] * 10

    train_again, val_again = train_val_indices(train_labels, val_size=6000, seed=0)
    assert torch.equal(train, train_again) and torch.equal(val, val_again)
    _, val_other = train_val_indices(train_labels, val_size=6000, seed=1)
    assert not torch.equal(val, val_other)

    with pytest.raises(ValueError, match="multiple of 10"):
        train_val_indices(train_labels, val_size=6001)


def test_random_subset_is_seeded_distinct_and_independent_of_global_rng() -> None:
    """Breaks if random_subset ignores its seed (e.g. draws from the global generator), repeats
    or invents rows, returns the wrong size, or changes the data for ``None``/``n >= len``."""
    full = FashionMNISTTensors(
        torch.arange(100, dtype=torch.uint8)[:, None, None].expand(100, 28, 28),
        torch.arange(100) % 10,
    )
    torch.manual_seed(1)
    first = full.random_subset(30, seed=5)
    torch.manual_seed(2)  # the global generator must not matter
    again = full.random_subset(30, seed=5)
    other = full.random_subset(30, seed=6)
    assert len(first) == 30
    rows = first.images[:, 0, 0].long()
    assert len(set(rows.tolist())) == 30  # distinct rows of the original
    assert torch.equal(first.labels, rows % 10)  # images and labels stay paired
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert not torch.equal(first.images, other.images)
    assert torch.equal(rows, random_indices(100, 30, seed=5))
    assert full.random_subset(None) is full and full.random_subset(100) is full


def test_random_indices_all_for_none_and_error_for_negative() -> None:
    """Breaks if ``None``/``n >= total`` does not give every index in order, or ``n < 0``
    passes silently (a slice ``[:-3]`` would quietly drop three)."""
    assert torch.equal(random_indices(7, None), torch.arange(7))
    assert torch.equal(random_indices(7, 9), torch.arange(7))
    assert len(random_indices(7, 0)) == 0
    with pytest.raises(ValueError, match="at least 0"):
        random_indices(7, -3)


def test_load_tensors_splits_and_normalisation_constants(
    fashion_splits: dict[str, FashionMNISTTensors],
) -> None:
    """Breaks if a split has the wrong size/dtype, or MEAN/STD are not the data's statistics."""
    sizes = {name: len(split) for name, split in fashion_splits.items()}
    assert sizes == {"train": 54_000, "val": 6_000, "test": 10_000}
    for split in fashion_splits.values():
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (28, 28)
        assert split.labels.dtype == torch.int64
        assert torch.bincount(split.labels, minlength=len(CLASSES)).min() > 0
    # MEAN/STD are the full 60k training set's pixel statistics (exact, from a histogram).
    pixels = torch.cat([fashion_splits["train"].images, fashion_splits["val"].images])
    hist = torch.bincount(pixels.flatten(), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    mean = (hist * values).sum() / hist.sum()
    std = ((hist * (values - mean) ** 2).sum() / hist.sum()).sqrt()
    assert mean.item() == pytest.approx(MEAN, abs=1e-4)
    assert std.item() == pytest.approx(STD, abs=1e-4)


# --- the standard path and the fast path agree --------------------------------------------------


@pytest.fixture(scope="module")
def standard_splits(fashion_root: Path) -> dict[str, torch.utils.data.Dataset]:
    return torchvision_datasets(fashion_root)


def assert_same_batches(
    fast: TensorLoader, standard: DataLoader, n_batches: int | None = None
) -> None:
    """Same number of batches, same normalised images (atol 1e-6), identical labels."""
    pairs = list(itertools.islice(zip(fast, standard, strict=True), n_batches))
    assert pairs, "no batches"
    for (x_fast, y_fast), (x_std, y_std) in pairs:
        assert x_fast.shape == x_std.shape and x_fast.dtype == x_std.dtype == torch.float32
        torch.testing.assert_close(x_fast, x_std, atol=1e-6, rtol=0)
        assert torch.equal(y_fast, y_std)


def test_tensor_loader_matches_dataloader_unshuffled(
    fashion_splits: dict[str, FashionMNISTTensors],
    standard_splits: dict[str, torch.utils.data.Dataset],
) -> None:
    """Breaks if the fast path's split, order or normalisation drifts from torchvision's."""
    fast = TensorLoader(fashion_splits["val"], batch_size=500)
    standard = DataLoader(standard_splits["val"], batch_size=500)
    assert len(fast) == len(standard) == 12
    assert_same_batches(fast, standard)
    # The first batches of the train and test splits line up too.
    for split in ("train", "test"):
        fast = TensorLoader(fashion_splits[split], batch_size=256)
        standard = DataLoader(standard_splits[split], batch_size=256)
        assert len(fast) == len(standard)
        assert_same_batches(fast, standard, n_batches=2)


@pytest.mark.slow
def test_tensor_loader_matches_dataloader_shuffled(
    fashion_splits: dict[str, FashionMNISTTensors],
    standard_splits: dict[str, torch.utils.data.Dataset],
) -> None:
    """Breaks if ``TensorLoader(shuffle=True, seed=s)`` stops matching a seeded RandomSampler."""
    dataset = standard_splits["val"]
    for seed in (0, 7):
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
        standard = DataLoader(dataset, batch_size=500, sampler=sampler)
        fast = TensorLoader(fashion_splits["val"], batch_size=500, shuffle=True, seed=seed)
        assert_same_batches(fast, standard)


# --- TensorLoader behaviour ---------------------------------------------------------------------


def numbered(n: int) -> FashionMNISTTensors:
    """``n`` images whose every pixel is their own index, labelled with that index."""
    images = torch.arange(n, dtype=torch.uint8)[:, None, None].expand(n, 28, 28).contiguous()
    return FashionMNISTTensors(images, torch.arange(n))


@pytest.mark.parametrize(("drop_last", "sizes"), [(False, [4, 4, 2]), (True, [4, 4])])
def test_tensor_loader_len_and_batch_sizes(drop_last: bool, sizes: list[int]) -> None:
    """Breaks if ``len`` or the batches disagree with ``drop_last`` (as a DataLoader would)."""
    loader = TensorLoader(numbered(10), batch_size=4, drop_last=drop_last)
    assert len(loader) == len(sizes)
    assert [len(y) for _, y in loader] == sizes
    assert len(loader.dataset) == 10
    labels = torch.cat([y for _, y in loader])
    assert torch.equal(labels, torch.arange(sum(sizes)))


def test_tensor_loader_reshuffles_each_epoch() -> None:
    """Breaks if every epoch repeats one order, drops/duplicates images, or misaligns labels."""
    loader = TensorLoader(numbered(100), batch_size=16, shuffle=True, seed=3)
    epochs = []
    for _ in range(2):
        xs, ys = zip(*loader, strict=True)
        x, y = torch.cat(xs), torch.cat(ys)
        assert torch.equal(y.sort().values, torch.arange(100))  # a permutation of all labels
        pixel = (x[:, 0, 0, 0] * STD + MEAN) * 255  # undo the normalisation of pixel (0, 0)
        torch.testing.assert_close(pixel, y.float(), atol=1e-3, rtol=0)  # image i has label i
        epochs.append(y)
    assert not torch.equal(epochs[0], epochs[1])
    assert not torch.equal(epochs[0], torch.arange(100))
    # Same seed, same sequence of epochs: runs are reproducible.
    again = TensorLoader(numbered(100), batch_size=16, shuffle=True, seed=3)
    assert torch.equal(torch.cat([y for _, y in again]), epochs[0])


def test_tensor_loader_augment_moves_pixels_only(
    fashion_splits: dict[str, FashionMNISTTensors],
) -> None:
    """Breaks if augmentation is a no-op, changes shape/dtype/labels or alters pixel values."""
    subset = fashion_splits["val"].subset(torch.arange(256))
    plain = list(TensorLoader(subset, batch_size=64))
    augmented = list(TensorLoader(subset, batch_size=64, augment=True, seed=1))
    assert len(plain) == len(augmented) == 4
    for (x, y), (x_aug, y_aug) in zip(plain, augmented, strict=True):
        assert x_aug.shape == x.shape == (64, 1, 28, 28)
        assert x_aug.dtype == x.dtype == torch.float32
        assert torch.equal(y_aug, y)
        assert not torch.equal(x_aug, x)
        # Flips and (wrapping) shifts permute the pixels of each image, never change them.
        flat, flat_aug = x.flatten(1).sort(1).values, x_aug.flatten(1).sort(1).values
        assert torch.equal(flat_aug, flat)
