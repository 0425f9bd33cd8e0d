"""A folder of PNG images as a data set: export, and a robust reference ``Dataset``.

Bad files to try it on are made by :mod:`course_utils.bad_files`.

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
file without ``.png`` suffix    ignored (a ``notes.txt``, the root's ``labels.csv``); listed
``.png`` file at the root       bad file (it has no class): skipped or raised, per ``on_error``
folder inside a class folder    bad folder: skipped or raised (``ImageFolder`` would read it
                                recursively and give its files the class's label)
empty class folder              kept as a class (labels stay stable); listed in the report
class whose every file is bad   kept as a class, like an empty one; listed in the report
truncated PNG                   bad file: skipped or raised, per ``on_error``
non-image named ``.png``        bad file: skipped or raised
another format named ``.png``   bad file (a JPEG or EPS is not a PNG): skipped or raised; only
                                Pillow's PNG parser ever reads a file (``formats=["PNG"]``)
broken symbolic link            bad file: skipped or raised (a valid link is followed)
decompression bomb              bad file: more than ``max_pixels`` pixels, read from the header
                                before any pixel is decoded; skipped or raised
wrong size                      bad file (never resized silently), checked before decoding
RGBA / LA                       converted: composited over black (transparent = background)
palette (P), RGB, 1-bit         converted to 8-bit grey (ITU-R 601-2 luma)
16-bit grey (I;16)              converted: divided by 257, so 65535 → 255 (not clipped)
no usable image at all          ``FileNotFoundError`` naming what was found instead
==============================  ==============================================================

Everything the dataset holds is plain data, so it pickles and works with ``num_workers > 0``.
"""

from __future__ import annotations

import os
import re
import stat
import warnings
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
    "DEFAULT_MAX_PIXELS",
    "BadImageError",
    "PNGFolder",
    "Skipped",
    "check_numbered_order",
    "class_folder_name",
    "export_image_folder",
    "load_grey",
    "read_png_cv2",
    "read_png_pil",
]

DEFAULT_MAX_PIXELS = 4096 * 4096  # 16.8 megapixels, checked from the header before decoding

# How other formats begin: a file named .png that starts like this is named in the error. Only
# these bytes are looked at; Pillow's parsers for these formats never see the file.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"%!PS", "EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"%PDF", "PDF"),
    (b"RIFF", "RIFF (WebP?)"),
)


class BadImageError(ValueError):
    """A file that cannot be used as an image of the data set; the message names it and why."""


@dataclass(frozen=True)
class Skipped:
    """One file or folder left out of a :class:`PNGFolder`, and why."""

    path: str
    reason: str


def class_folder_name(label: int, name: str, digits: int = 2) -> str:
    """``"00_T-shirt-top"``: the label zero-padded to ``digits`` digits (so that the folders' text
    order is the label order: see the module docstring), then the name, ``/`` and spaces as ``-``.

    Raises:
        ValueError: ``label`` is negative or needs more than ``digits`` digits.
    """
    if not 0 <= label < 10**digits:
        raise ValueError(f"label {label} does not fit in {digits} digit(s); pass digits=")
    return f"{label:0{digits}d}_{name.replace('/', '-').replace(' ', '-')}"


def check_numbered_order(classes: Sequence[str]) -> None:
    """Refuse class folders whose text order changes once the numbers in their names are
    zero-padded (``10_x`` before ``2_y``, ``c10`` before ``c2``, also beside unnumbered folders):
    labels taken from the sorted names would silently not follow the numbers.

    Raises:
        ValueError: naming the folders in both orders and the fix (zero-padded numbers).
    """
    width = max((len(n) for name in classes for n in re.findall(r"\d+", name)), default=0)
    by_number = sorted(classes, key=lambda name: re.sub(r"\d+", lambda m: m[0].zfill(width), name))
    if list(classes) != by_number:
        raise ValueError(
            f"class folders sort as text as {list(classes)}, but their numbers say "
            f"{by_number}: labels taken from the sorted names would not match the numbers. "
            "Zero-pad the numbers in the names (class_folder_name does: 00_…, 01_…, …, 10_…)."
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


def load_grey(
    path: str | Path,
    expected_size: tuple[int, int] | None = (28, 28),
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Open ``path`` as an 8-bit grey (mode ``L``) PIL image, following the module's policy.

    Only Pillow's PNG parser reads the file (``formats=["PNG"]``), and the size is checked from
    the header before any pixel is decoded: a small file that claims 30000×30000 pixels (a
    decompression bomb) or the wrong size costs nothing.

    Raises:
        BadImageError: missing (a broken link), not a regular file, not a PNG, too large,
            unreadable, truncated, an unsupported mode or the wrong size; the message names the
            file and the reason.
    """
    path = Path(path)
    _check_regular_file(path)
    try:
        with warnings.catch_warnings():
            # Pillow warns above ~89 megapixels; such a file is refused below, with its name.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=["PNG"]) as img:
                _check_size(path, img.size, expected_size, max_pixels)
                img.load()  # decodes the pixels: a truncated file fails here, not at open()
                image = img.copy()
    except BadImageError:  # from _check_size: already says what is wrong
        raise
    except Image.DecompressionBombError as err:  # Pillow's own guard, above ~179 megapixels
        raise BadImageError(f"{path}: too large, not decoded ({err})") from None
    except UnidentifiedImageError:
        raise BadImageError(f"{path}: {_not_png_reason(path)}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise BadImageError(f"{path}: unreadable or truncated image ({err})") from None
    return _to_grey(image, path)


def _check_regular_file(path: Path) -> None:
    """Refuse a broken link, a missing file and anything that is not a regular file (a FIFO
    named ``.png`` would block ``open()`` for ever)."""
    try:
        mode = path.stat().st_mode  # follows links
    except FileNotFoundError:
        if path.is_symlink():
            target = os.readlink(path)
            raise BadImageError(f"{path}: broken symbolic link (to {target}, missing)") from None
        raise BadImageError(f"{path}: file not found (deleted or moved?)") from None
    except OSError as err:  # a link loop, no permission
        raise BadImageError(f"{path}: cannot be read ({err.strerror or err})") from None
    if not stat.S_ISREG(mode):
        raise BadImageError(f"{path}: not a regular file (a device, FIFO or socket)")


def _check_size(
    path: Path, size: tuple[int, int], expected_size: tuple[int, int] | None, max_pixels: int
) -> None:
    """The header's size against the pixel budget and ``expected_size``, before decoding."""
    w, h = size
    if w * h > max_pixels:
        raise BadImageError(
            f"{path}: too large, not decoded: {h}×{w} = {w * h:,} pixels, more than the "
            f"{max_pixels:,} allowed (a decompression bomb?); pass max_pixels= to allow it"
        )
    if expected_size is not None and (h, w) != tuple(expected_size):
        raise BadImageError(
            f"{path}: size {h}×{w}, expected {expected_size[0]}×{expected_size[1]} "
            "(not resized silently; add a Resize transform and expected_size=None to accept it)"
        )


def _not_png_reason(path: Path) -> str:
    """Why Pillow's PNG parser refused ``path``, from its first bytes only."""
    with open(path, "rb") as f:
        head = f.read(16)
    kind = next((name for magic, name in _SIGNATURES if head.startswith(magic)), None)
    if kind == "PNG":
        return "unreadable or truncated image (the PNG header is broken)"
    if kind is not None:
        return f"the file is {kind}, not PNG, despite its name (only PNG files are opened)"
    return "not an image file (no PNG signature)"


def _to_grey(image: Image.Image, path: Path) -> Image.Image:
    mode = image.mode
    if mode == "L":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image)
        if values.min() < 0 or values.max() > 65535:
            raise BadImageError(f"{path}: {mode} values outside 0–65535")
        # round(v / 257) in integers: v / 257 is never exactly halfway for an integer v
        return Image.fromarray(((values.astype(np.uint32) + 128) // 257).astype(np.uint8))
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


_NESTED = (
    "a folder inside a class folder: its files are not read (ImageFolder would read them, "
    "with this class's label); move them into a class folder or out of the root"
)


class PNGFolder(Dataset):
    """The tested reference Dataset over an ImageFolder layout of PNG files.

    Args:
        root: the folder holding one subfolder per class.
        transform: applied to each 8-bit grey PIL image; default ToTensor + Normalize with
            Fashion-MNIST's mean and std.
        on_error: ``"skip"`` leaves bad files and folders out (see :attr:`report`); ``"raise"``
            refuses the folder with a :class:`BadImageError` that lists every one of them.
        expected_size: ``(height, width)`` every image must have; ``None`` accepts any size.
        max_pixels: the most pixels an image may have (read from its header, before decoding).

    Attributes:
        classes, class_to_idx, samples, targets: as in ``torchvision.datasets.ImageFolder``.
        report: the :class:`Skipped` entries (path relative to ``root``, and the reason).

    Raises:
        FileNotFoundError: no class folder, or no usable image in any of them (the message
            lists what was found instead).
        BadImageError: with ``on_error="raise"``, any bad file or folder.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        on_error: Literal["skip", "raise"] = "skip",
        expected_size: tuple[int, int] | None = (28, 28),
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        self.root = Path(root)
        if not self.root.exists():
            raise FileNotFoundError(f"data root {self.root} does not exist")
        if not self.root.is_dir():
            raise NotADirectoryError(f"data root {self.root} is a file, not a folder")
        self.transform = transform if transform is not None else standard_transform()
        self.on_error, self.expected_size, self.max_pixels = on_error, expected_size, max_pixels
        self.report: list[Skipped] = []
        entries = sorted(self.root.iterdir())
        self.classes = [p.name for p in entries if p.is_dir() and not p.name.startswith(".")]
        if not self.classes:
            raise FileNotFoundError(f"{self.root} has no class folders (expected root/<class>/*)")
        check_numbered_order(self.classes)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        bad: list[Skipped] = []
        for path in entries:
            if path.name in self.class_to_idx:
                continue
            if path.name.startswith("."):
                kind = "folder" if path.is_dir() else "file"
                self.report.append(Skipped(path.name, f"hidden {kind}: ignored"))
            elif path.suffix.lower() == ".png":
                bad.append(Skipped(path.name, "a .png at the root, outside any class folder"))
            else:
                self.report.append(Skipped(path.name, "not a .png file: ignored"))
        self.samples: list[tuple[str, int]] = []
        for name in self.classes:
            kept, n_bad = len(self.samples), len(bad)
            files = sorted((self.root / name).iterdir())
            for path in files:
                rel = path.relative_to(self.root).as_posix()
                if path.name.startswith("."):
                    kind = "folder" if path.is_dir() else "file"
                    self.report.append(Skipped(rel, f"hidden {kind}: ignored"))
                elif path.is_dir():
                    bad.append(Skipped(rel, _NESTED))
                elif path.suffix.lower() != ".png":
                    self.report.append(Skipped(rel, "not a .png file: ignored"))
                else:
                    try:
                        load_grey(path, expected_size, max_pixels)
                    except BadImageError as err:
                        bad.append(Skipped(rel, str(err).removeprefix(f"{path}: ")))
                    else:
                        self.samples.append((str(path), self.class_to_idx[name]))
            if len(self.samples) == kept:
                why = "every .png in it is bad" if len(bad) > n_bad else "no .png file in it"
                why = why if files else "empty class folder"
                self.report.append(Skipped(name, f"{why}: class kept, no images"))
        folders = [s for s in bad if s.reason == _NESTED]
        if bad and on_error == "raise":
            listed = "\n  ".join(f"{s.path}: {s.reason}" for s in bad)
            counted = f"{len(bad) - len(folders)} bad file(s)"
            counted += f" and {len(folders)} bad folder(s)" if folders else ""
            raise BadImageError(
                f"{counted} under {self.root}:\n  {listed}\n"
                "Fix or remove them, or pass on_error='skip' to leave them out (see .report)."
            )
        self.report += [
            Skipped(s.path, f"bad {'folder' if s in folders else 'file'}, skipped: {s.reason}")
            for s in bad
        ]
        if not self.samples:
            listed = "\n  ".join(f"{s.path}: {s.reason}" for s in self.report[:10])
            more = f"\n  … and {len(self.report) - 10} more" if len(self.report) > 10 else ""
            raise FileNotFoundError(
                f"no usable image under {self.root} (expected root/<class>/*.png); "
                f"found instead:\n  {listed}{more}"
            )
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        # A file that changed after the scan still fails with its name, also inside a worker.
        return self.transform(load_grey(path, self.expected_size, self.max_pixels)), label

    def report_frame(self) -> pd.DataFrame:
        """The report as a table with columns ``path`` and ``reason``; bytes of a name that are
        not UTF-8 are shown escaped (``bad\\xff.png``), as pandas refuses them raw."""
        rows = [
            [t.encode(errors="surrogateescape").decode(errors="backslashreplace") for t in r]
            for r in ((s.path, s.reason) for s in self.report)
        ]
        return pd.DataFrame(rows, columns=["path", "reason"])
