"""A folder of PNG images as a data set: export, a robust reference ``Dataset``, and bad files.

Layout (torchvision's ``ImageFolder``)::

    root/00_T-shirt-top/train_00012.png
    root/01_Trouser/...
    root/labels.csv        path,label,class_name (paths relative to root)

Class folders are prefixed with the label, zero-padded, so sorting the folder names as text
(what ``ImageFolder`` does to number the classes) gives the label order: unpadded, ``10_…``
would sort between ``1_…`` and ``2_…`` and shift every later label. :class:`PNGFolder` refuses
numbered folders whose text order is not their numeric order.

:class:`PNGFolder` checks every file when it is built, in the main process, and applies one
explicit policy to bad ones (``on_error="skip"`` or ``"raise"``). Its policy per input:

==============================  ==============================================================
input                           policy
==============================  ==============================================================
missing root / root is a file   ``FileNotFoundError`` / ``NotADirectoryError`` at once
numbered folders out of order   ``ValueError`` at once (``10_x`` sorted before ``2_y``)
hidden file or folder (``.*``)  ignored (``.DS_Store``, ``._x.png``); listed in the report
file without ``.png`` suffix    ignored (a ``notes.txt``); listed in the report
empty class folder              kept as a class (labels stay stable); listed in the report
truncated PNG                   bad file: skipped or raised, per ``on_error``
non-image named ``.png``        bad file: skipped or raised
another format named ``.png``   bad file (a JPEG is not a PNG): skipped or raised
wrong size                      bad file (never resized silently): skipped or raised
RGBA / LA                       converted: composited over black (transparent = background)
palette (P), RGB, 1-bit         converted to 8-bit grey (ITU-R 601-2 luma)
16-bit grey (I;16)              converted: divided by 257, so 65535 → 255 (not clipped)
==============================  ==============================================================

Everything the dataset holds is plain data, so it pickles and works with ``num_workers > 0``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .data import CLASSES, FashionMNISTTensors, standard_transform

__all__ = [
    "BadImageError",
    "PNGFolder",
    "Skipped",
    "check_numbered_order",
    "class_folder_name",
    "export_image_folder",
    "load_grey",
    "make_bad_examples",
    "read_png_cv2",
    "read_png_pil",
]


class BadImageError(ValueError):
    """A file that cannot be used as an image of the data set; the message names it and why."""


@dataclass(frozen=True)
class Skipped:
    """One file or folder left out of a :class:`PNGFolder`, and why."""

    path: str
    reason: str


def class_folder_name(label: int, name: str, digits: int = 2) -> str:
    """``"00_T-shirt-top"``: the label zero-padded to ``digits`` digits, then the name with
    ``/`` and spaces replaced by ``-``.

    Zero-padding makes the folders' text order (how ``ImageFolder`` numbers classes) equal to
    the label order also past 9 classes: ``"10_x"`` sorts after ``"09_y"``, while unpadded
    ``"10_x"`` would sort between ``"1_…"`` and ``"2_…"``.

    Raises:
        ValueError: ``label`` is negative or needs more than ``digits`` digits.
    """
    if not 0 <= label < 10**digits:
        raise ValueError(f"label {label} does not fit in {digits} digit(s); pass digits=")
    return f"{label:0{digits}d}_{name.replace('/', '-').replace(' ', '-')}"


_NUMBERED = re.compile(r"(\d+)_")


def check_numbered_order(classes: Sequence[str]) -> None:
    """Refuse class folders that all start with a number but whose sorted (text) order is not
    their numeric order: labels taken from the sorted names would silently shift.

    Raises:
        ValueError: naming the folders in both orders and the fix (zero-padded prefixes).
    """
    numbers = [_NUMBERED.match(name) for name in classes]
    if not classes or not all(numbers):
        return
    by_number = sorted(classes, key=lambda name: int(_NUMBERED.match(name)[1]))
    if list(classes) != by_number:
        raise ValueError(
            f"class folders sort as text as {list(classes)}, but their numbers say "
            f"{by_number}: labels taken from the sorted names would not match the numbers. "
            "Zero-pad the prefixes (class_folder_name does: 00_…, 01_…, …, 10_…)."
        )


def export_image_folder(
    data: FashionMNISTTensors,
    root: str | Path,
    prefix: str = "img",
    classes: Sequence[str] = CLASSES,
    csv_name: str = "labels.csv",
) -> pd.DataFrame:
    """Write ``data`` as 8-bit grey PNGs in the ImageFolder layout plus a labels CSV.

    Class folders are named by :func:`class_folder_name` (zero-padded labels, at least two
    digits). Files are named ``<prefix>_<row>.png``. An existing CSV is extended, so several
    splits can share a root with different prefixes. Each file is written to a temporary name
    and renamed.

    Returns:
        The rows written: ``path`` (relative to ``root``, with ``/``), ``label``, ``class_name``.
    """
    root = Path(root)
    rows = []
    digits = max(2, len(str(len(classes) - 1)))
    folders = [class_folder_name(c, name, digits) for c, name in enumerate(classes)]
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(data.images, data.labels.tolist(), strict=True)):
        rel = f"{folders[label]}/{prefix}_{i:05d}.png"
        tmp = root / f"{rel}.tmp"
        Image.fromarray(image.numpy()).save(tmp, format="PNG")
        os.replace(tmp, root / rel)
        rows.append((rel, label, classes[label]))
    frame = pd.DataFrame(rows, columns=["path", "label", "class_name"])
    csv = root / csv_name
    if csv.exists():
        frame = pd.concat([pd.read_csv(csv), frame], ignore_index=True)
    frame.to_csv(csv.with_suffix(".tmp"), index=False)
    os.replace(csv.with_suffix(".tmp"), csv)
    return frame


def load_grey(path: str | Path, expected_size: tuple[int, int] | None = (28, 28)) -> Image.Image:
    """Open ``path`` as an 8-bit grey (mode ``L``) PIL image, following the module's policy.

    Raises:
        BadImageError: unreadable, truncated, not a PNG, an unsupported mode or the wrong size;
            the message names the file and the reason.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            fmt = img.format
            img.load()  # decodes the pixels: a truncated file fails here, not at open()
            image = img.copy()
    except UnidentifiedImageError:
        raise BadImageError(f"{path}: not an image file (PIL cannot identify it)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise BadImageError(f"{path}: unreadable or truncated image ({err})") from None
    if fmt != "PNG":
        raise BadImageError(f"{path}: the file is {fmt}, not PNG, despite its name")
    if expected_size is not None and image.size[::-1] != tuple(expected_size):
        w, h = image.size
        raise BadImageError(
            f"{path}: size {h}×{w}, expected {expected_size[0]}×{expected_size[1]} "
            "(not resized silently; add a Resize transform and expected_size=None to accept it)"
        )
    return _to_grey(image, path)


def _to_grey(image: Image.Image, path: Path) -> Image.Image:
    mode = image.mode
    if mode == "L":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.int64)
        if values.min() < 0 or values.max() > 65535:
            raise BadImageError(f"{path}: {mode} values outside 0–65535")
        return Image.fromarray(np.round(values / 257).astype(np.uint8))
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("L")
    if mode in ("RGB", "P", "1"):
        return image.convert("L")
    raise BadImageError(f"{path}: unsupported image mode {mode!r}")


def read_png_pil(path: str | Path) -> np.ndarray:
    """A PNG as a ``uint8`` ``[H, W]`` array, through :func:`load_grey` (no size check)."""
    return np.asarray(load_grey(path, expected_size=None))


def read_png_cv2(path: str | Path) -> np.ndarray:
    """A grey PNG as a ``uint8`` ``[H, W]`` array with OpenCV.

    ``cv2.imread`` does not raise on a missing or unreadable file: it returns ``None``. This
    wrapper turns that into a :class:`BadImageError` that names the file.
    """
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise BadImageError(f"{path}: OpenCV could not read it (missing, not an image, corrupt)")
    return image


class PNGFolder(Dataset):
    """The tested reference Dataset over an ImageFolder layout of PNG files.

    Args:
        root: the folder holding one subfolder per class.
        transform: applied to each 8-bit grey PIL image; default ToTensor + Normalize with
            Fashion-MNIST's mean and std.
        on_error: ``"skip"`` leaves bad files out (see :attr:`report`); ``"raise"`` refuses the
            folder with a :class:`BadImageError` that lists every bad file.
        expected_size: ``(height, width)`` every image must have; ``None`` accepts any size.

    Attributes:
        classes, class_to_idx, samples, targets: as in ``torchvision.datasets.ImageFolder``.
        report: the :class:`Skipped` entries (path relative to ``root``, and the reason).
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        on_error: Literal["skip", "raise"] = "skip",
        expected_size: tuple[int, int] | None = (28, 28),
    ) -> None:
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        self.root = Path(root)
        if not self.root.exists():
            raise FileNotFoundError(f"data root {self.root} does not exist")
        if not self.root.is_dir():
            raise NotADirectoryError(f"data root {self.root} is a file, not a folder")
        self.transform = transform if transform is not None else standard_transform()
        self.on_error = on_error
        self.expected_size = expected_size
        self.report: list[Skipped] = []
        folders = sorted(p for p in self.root.iterdir() if p.is_dir())
        self.classes = [p.name for p in folders if not p.name.startswith(".")]
        if not self.classes:
            raise FileNotFoundError(f"{self.root} has no class folders (expected root/<class>/*)")
        check_numbered_order(self.classes)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.report += [
            Skipped(p.name, "hidden folder: ignored") for p in folders if p.name[0] == "."
        ]
        bad: list[Skipped] = []
        self.samples: list[tuple[str, int]] = []
        for name in self.classes:
            files = sorted((self.root / name).iterdir())
            if not files:
                self.report.append(Skipped(name, "empty class folder: class kept, no images"))
            for path in files:
                rel = path.relative_to(self.root).as_posix()
                if path.name.startswith("."):
                    self.report.append(Skipped(rel, "hidden file: ignored"))
                elif not path.is_file() or path.suffix.lower() != ".png":
                    self.report.append(Skipped(rel, "not a .png file: ignored"))
                else:
                    try:
                        load_grey(path, expected_size)
                    except BadImageError as err:
                        bad.append(Skipped(rel, str(err).split(": ", 1)[1]))
                    else:
                        self.samples.append((str(path), self.class_to_idx[name]))
        if bad and on_error == "raise":
            listed = "\n  ".join(f"{s.path}: {s.reason}" for s in bad)
            raise BadImageError(f"{len(bad)} bad file(s) under {self.root}:\n  {listed}")
        self.report += [Skipped(s.path, f"bad file, skipped: {s.reason}") for s in bad]
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        # A file that changed after the scan still fails with its name, also inside a worker.
        return self.transform(load_grey(path, self.expected_size)), label

    def report_frame(self) -> pd.DataFrame:
        """The report as a table with columns ``path`` and ``reason``."""
        return pd.DataFrame([(s.path, s.reason) for s in self.report], columns=["path", "reason"])


def make_bad_examples(folder: str | Path, good: np.ndarray) -> dict[str, str]:
    """Write one example of each kind of bad or unusual input into ``folder``.

    Args:
        folder: a class folder (created if needed).
        good: a ``uint8`` ``[28, 28]`` image the unusual-but-valid files are made from.

    Returns:
        ``{file name: expected outcome}``, where the outcome is ``"ok"`` (accepted, converted),
        ``"bad"`` (skipped or raised per ``on_error``) or ``"ignored"``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    grey = Image.fromarray(good)
    grey.save(folder / "good.png")
    full = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(full[: len(full) // 2])
    (folder / "not_an_image.png").write_bytes(b"this is not an image, whatever its name says\n")
    (folder / "notes.txt").write_text("a stray text file\n")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "._good.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    grey.convert("RGB").save(folder / "as_jpeg.png", format="JPEG")
    rgba = np.zeros((28, 28, 4), dtype=np.uint8)
    rgba[..., :3] = good[..., None]
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(folder / "rgba.png")
    Image.fromarray(good.astype(np.uint16) * 257).save(folder / "sixteen_bit.png")
    grey.convert("P").save(folder / "palette.png")
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(folder / "wrong_size.png")
    return {
        "good.png": "ok",
        "truncated.png": "bad",
        "not_an_image.png": "bad",
        "notes.txt": "ignored",
        ".DS_Store": "ignored",
        "._good.png": "ignored",
        "as_jpeg.png": "bad",
        "rgba.png": "ok",
        "sixteen_bit.png": "ok",
        "palette.png": "ok",
        "wrong_size.png": "bad",
    }
