"""Chapter 7 ``check_*`` helpers: the right answer passes, each typical mistake fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from checks_support import fails, passes
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler

from course_utils import pngfolder
from course_utils.checks._common import ShortcutRefused
from course_utils.checks.ch07 import check_png_dataset, check_seeded_loader, check_to_tensor
from course_utils.data import MEAN, STD, standard_transform
from course_utils.pngfolder import BadImageError, PNGFolder

# --- 7.1: the transform --------------------------------------------------------------------


def _to_tensor(image: Image.Image) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(image, dtype=np.float32))[None] / 255
    return (x - MEAN) / STD


def test_to_tensor_right_answer_passes(capsys: pytest.CaptureFixture[str]) -> None:
    passes(check_to_tensor, _to_tensor, "7.1", capsys)


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (lambda im: _to_tensor(im) * STD + MEAN, "then normalise"),
        (lambda im: (torch.from_numpy(np.asarray(im, np.float32))[None] - MEAN) / STD, "by 255"),
        (lambda im: _to_tensor(im)[0], "add the channel dimension"),
        (lambda im: _to_tensor(im).double(), "float32"),
        (lambda im: _to_tensor(im).transpose(1, 2), "PIL's size is (width, height)"),
        (lambda im: _to_tensor(im).numpy(), "return a tensor"),
        (lambda im: standard_transform()(im), "write the transform yourself"),
        (lambda im: torchvision.transforms.functional.to_tensor(im), "write the transform"),
    ],
    ids=[
        "not-normalised",
        "not-divided-by-255",
        "no-channel-dim",
        "float64",
        "width-height-swapped",
        "numpy",
        "shortcut-standard_transform",
        "shortcut-F.to_tensor",
    ],
)
def test_to_tensor_wrong_answers_fail(answer, hint, capsys) -> None:
    fails(check_to_tensor, answer, hint, "7.1", capsys)


def test_to_tensor_refuse_restores_the_library() -> None:
    original = torchvision.transforms.ToTensor
    with pytest.raises(ShortcutRefused):
        check_to_tensor(lambda im: torchvision.transforms.ToTensor()(im))
    assert torchvision.transforms.ToTensor is original


# --- 7.2: the seeded loader ----------------------------------------------------------------


def _loader(dataset, batch_size: int, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class _FreshGeneratorSampler(torch.utils.data.Sampler):
    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed)))

    def __len__(self) -> int:
        return self.n


def _global_seed(dataset, batch_size: int, seed: int) -> DataLoader:
    torch.manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True)


def test_seeded_loader_right_answer_passes(capsys: pytest.CaptureFixture[str]) -> None:
    passes(check_seeded_loader, _loader, "7.2", capsys)


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (lambda ds, b, s: DataLoader(ds, batch_size=b, shuffle=True), "depend on seed alone"),
        (_global_seed, "do not call torch.manual_seed here"),
        (lambda ds, b, s: DataLoader(ds, batch_size=b), "pass shuffle=True"),
        (lambda ds, b, s: _loader(ds, b, 0), "seed the generator"),
        (
            lambda ds, b, s: DataLoader(
                ds, batch_size=b, sampler=_FreshGeneratorSampler(len(ds), s)
            ),
            "create the generator once",
        ),
        (lambda ds, b, s: _loader(ds, 2 * b, s), "batch sizes"),
        (
            lambda ds, b, s: DataLoader(
                ds, batch_size=b, sampler=RandomSampler(ds, generator=_gen(s))
            ),
            "draws its workers' base seed",
        ),
    ],
    ids=[
        "no-generator",
        "torch.manual_seed-inside",
        "not-shuffled",
        "seed-ignored",
        "generator-per-epoch",
        "wrong-batch-size",
        "generator-on-sampler-only",
    ],
)
def test_seeded_loader_wrong_answers_fail(answer, hint, capsys) -> None:
    fails(check_seeded_loader, answer, hint, "7.2", capsys)


# --- 7.3: the dataset ----------------------------------------------------------------------


class _Right(torch.utils.data.Dataset):
    sort_numbers = True
    decode = True
    name_in_error = True

    def __init__(self, root, on_error: str = "skip", transform=None) -> None:
        if on_error not in ("skip", "raise"):
            raise ValueError(on_error)
        root = Path(root)
        names = sorted(p.name for p in root.iterdir() if p.is_dir())
        numbered = all(n.split("_")[0].isdigit() for n in names)
        if numbered and self.sort_numbers:
            names.sort(key=lambda n: int(n.split("_")[0]))
        self.classes, self.samples, self.skipped = names, [], []
        self.transform = transform or standard_transform()
        for label, name in enumerate(self.classes):
            for path in sorted((root / name).glob("*.png")):
                try:
                    with Image.open(path) as img:
                        if self.decode:
                            img.load()
                except OSError as err:
                    if on_error == "raise":
                        where = path if self.name_in_error else "a file"
                        raise BadImageError(f"{where}: {err}") from err
                    self.skipped.append(path)
                else:
                    self.samples.append((path, label))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        with Image.open(path) as img:
            return self.transform(img.convert("L")), label


def test_png_dataset_right_answer_passes(capsys: pytest.CaptureFixture[str]) -> None:
    passes(check_png_dataset, _Right, "7.3", capsys)


class _TextOrder(_Right):
    sort_numbers = False


class _Lazy(_Right):
    decode = False


class _Anonymous(_Right):
    name_in_error = False


class _NeverRaises(_Right):
    def __init__(self, root, on_error: str = "skip", transform=None) -> None:
        super().__init__(root, "skip", transform)


class _NoSkippedList(_Right):
    def __init__(self, root, on_error: str = "skip", transform=None) -> None:
        super().__init__(root, on_error, transform)
        self.skipped = []


class _AnyPolicy(_Right):
    def __init__(self, root, on_error: str = "skip", transform=None) -> None:
        super().__init__(root, on_error if on_error == "raise" else "skip", transform)


class _NotNormalised(_Right):
    def __getitem__(self, i: int):
        x, y = super().__getitem__(i)
        return x * STD + MEAN, y


class _WrapsPNGFolder(PNGFolder):
    def __init__(self, root, on_error: str = "skip") -> None:
        super().__init__(root, on_error=on_error)
        self.skipped = [r.path for r in self.report]


class _WrapsImageFolder(torchvision.datasets.ImageFolder):
    def __init__(self, root, on_error: str = "skip") -> None:
        super().__init__(root)


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (_TextOrder, "order them by that number"),
        (_Lazy, "decode every file"),
        (_Anonymous, "with the full path"),
        (_NeverRaises, "raise BadImageError in __init__"),
        (_NoSkippedList, "self.skipped"),
        (_NotNormalised, "ToTensor + Normalize"),
        (_AnyPolicy, "accepted silently"),
        (_WrapsPNGFolder, "write the dataset yourself"),
        (_WrapsImageFolder, "write the dataset yourself"),
    ],
    ids=[
        "labels-by-text-order",
        "lazy-decode-keeps-truncated",
        "error-without-path",
        "raise-policy-ignored",
        "skipped-not-listed",
        "not-normalised",
        "unknown-policy-accepted",
        "shortcut-PNGFolder",
        "shortcut-ImageFolder",
    ],
)
def test_png_dataset_wrong_answers_fail(answer, hint, capsys) -> None:
    fails(check_png_dataset, answer, hint, "7.3", capsys)


def test_png_dataset_refuses_aliases_and_restores_them(capsys) -> None:
    originals = (pngfolder.PNGFolder, pngfolder.load_grey, torchvision.datasets.ImageFolder)
    namespace = {"grey": pngfolder.load_grey, "_Right": _Right}
    exec(  # a notebook that ran `from course_utils.pngfolder import load_grey as grey`
        "class Alias(_Right):\n"
        "    def __getitem__(self, i):\n"
        "        path, label = self.samples[i]\n"
        "        return self.transform(grey(path)), label\n",
        namespace,
    )
    with pytest.raises(ShortcutRefused):
        check_png_dataset(namespace["Alias"])
    assert (pngfolder.PNGFolder, pngfolder.load_grey, torchvision.datasets.ImageFolder) == originals
    assert namespace["grey"] is pngfolder.load_grey
    capsys.readouterr()
