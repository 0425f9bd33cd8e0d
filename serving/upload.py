"""Turning an uploaded image into the model's input: the preprocessing that chapter 9 serves.

This module imports NumPy and Pillow, never torch: the ONNX server runs it without PyTorch
installed. :func:`preprocess_array` returns a NumPy array (what ONNX Runtime takes);
:func:`preprocess_image` is the same as a ``torch.Tensor`` (torch imported on first call).

Preprocessing turns the bytes of a PNG or JPEG of any size and mode into the input the model was
trained on, in four documented steps:

1. **decode safely**: PNG and JPEG only. Before any pixel is decoded, the header's size is
   checked against ``max_pixels`` *and* the memory the decode will take, counted in bytes per
   pixel of the image's mode (a 16-bit greyscale PNG takes 2, an RGB JPEG 4 as Pillow stores it,
   plus the working copies of the steps below) against ``max_decode_bytes``. A
   :class:`MemoryBudget` shared by a server's requests bounds the total. Pillow's own, looser
   guard (``DecompressionBombError`` inside ``Image.open``) is caught too;
2. **greyscale**: transparent pixels are composited onto white (a cut-out product photo),
   16-bit images are scaled (not clipped) to 8 bits, band by band with integers (no float64
   copy of the image), colour is converted with ITU-R 601 luma. The EXIF orientation of a phone
   photo is applied to the grey array (a free NumPy view); malformed EXIF is ignored;
3. **polarity**: Fashion-MNIST shows a *light garment on a black background* (its images were
   negated). A catalogue photo is the opposite: a dark garment on white. With ``invert=None``
   (the default) the image is inverted when its border is brighter than mid-grey, i.e. when the
   background is light; ``True``/``False`` force it;
4. **frame like the data set**: Zalando trimmed each product photo to the garment, resized its
   longer side to 28 pixels and padded the shorter side (chapter 9 measures how many training
   images touch two opposite edges and reach 255). So: crop to the bright content, resize the
   longer side to 28 (Lanczos, aspect kept), pad with black, centred, and stretch the contrast so
   that the brightest pixel is 255. Then scale to [0, 1] and normalise with the training mean and
   std.

An image that is already 28×28 skips step 4 (apart from polarity, it is taken to be in the data
set's format), so a Fashion-MNIST image goes through unchanged and the API predicts exactly what
the model predicts on the test tensors.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from course_utils.fashion_mnist import MEAN, STD

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_MAX_DECODE_BYTES",
    "DEFAULT_MAX_PIXELS",
    "FORMATS",
    "MAX_JPEG_SCANS",
    "SIZE",
    "ImageTooLarge",
    "InvalidImage",
    "MemoryBudget",
    "PreprocessError",
    "ServerBusy",
    "UnsupportedImage",
    "crop_to_content",
    "decode_cost",
    "decode_image",
    "encode_png",
    "exif_orientation",
    "fit_to_square",
    "jpeg_scans",
    "needs_inversion",
    "normalise",
    "normalise_array",
    "open_image",
    "orient",
    "preprocess_array",
    "preprocess_image",
    "stretch_contrast",
    "to_grey",
]


FORMATS: tuple[str, ...] = ("PNG", "JPEG")
DEFAULT_MAX_PIXELS = 4096 * 4096  # 16.8 megapixels: checked from the header before decoding
DEFAULT_MAX_DECODE_BYTES = 128 * 2**20  # per upload: the decoded image and its working copies
# Decoding a progressive JPEG goes over every block of the image once per scan (about 14 ms a scan
# at 4096² here). Encoders write 2 to ~10 scans (Pillow's progressive=True: 6 grey, 10 colour); a
# crafted file that repeats a 33-byte scan 1,000 times took 14 s to decode, a thread stalled.
MAX_JPEG_SCANS = 32
SIZE = 28
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")  # how PNG and JPEG files begin
_ONE_BYTE_MODES = ("1", "L", "P")  # Pillow stores these with 1 byte per pixel
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")  # 2 bytes per pixel
_BAND_ROWS = 256  # 16-bit images are scaled to 8 bits this many rows at a time


class PreprocessError(ValueError):
    """An upload that cannot be turned into a model input; ``status`` is the HTTP code to send."""

    status = 400
    error = "invalid image"


class UnsupportedImage(PreprocessError):
    """The bytes are not a PNG or JPEG image."""

    status = 415
    error = "unsupported media type"


class InvalidImage(PreprocessError):
    """A PNG or JPEG that is empty, truncated or corrupt."""

    status = 400
    error = "invalid image"


class ImageTooLarge(PreprocessError):
    """An image with more pixels, or needing more memory to decode, than allowed."""

    status = 413
    error = "image too large"


class ServerBusy(PreprocessError):
    """The server's decode memory is taken by other uploads for too long: retry later."""

    status = 503
    error = "server busy"


# --- memory ---------------------------------------------------------------------------------------


class MemoryBudget:
    """Bytes that concurrent decodes may hold together; each upload reserves its share first.

    ``with budget.reserve(n):`` waits (up to ``timeout`` seconds) until ``n`` bytes are free, so
    eight clients sending huge images take turns instead of multiplying the server's memory by
    eight. A request that cannot get its share in time raises :class:`ServerBusy` (a 503).
    """

    def __init__(self, total_bytes: int, timeout: float = 30.0) -> None:
        self.total_bytes = total_bytes
        self.timeout = timeout
        self._free = total_bytes
        self._changed = threading.Condition()

    @contextmanager
    def reserve(self, n_bytes: int) -> Iterator[None]:
        """Hold ``min(n_bytes, total_bytes)`` bytes of the budget for the ``with`` block."""
        n = min(n_bytes, self.total_bytes)
        deadline = time.monotonic() + self.timeout
        with self._changed:
            while self._free < n:
                left = deadline - time.monotonic()
                if left <= 0 or not self._changed.wait(left) and self._free < n:
                    raise ServerBusy(
                        f"other uploads hold the server's decode memory ({self.total_bytes:,} "
                        f"bytes) for more than {self.timeout:g} s; retry later"
                    )
            self._free -= n
        try:
            yield
        finally:
            with self._changed:
                self._free += n
                self._changed.notify_all()


def decode_cost(mode: str, width: int, height: int) -> int:
    """The bytes that decoding and preprocessing a ``mode`` image of this size hold at most.

    Pillow stores 1-bit, greyscale and palette images with 1 byte per pixel, 16-bit greyscale
    with 2 and every other mode (RGB included) with 4. The steps after decoding add working
    copies: the grey image, its NumPy copy, the inverted and the cropped array (4 bytes per
    pixel), plus an RGBA copy and the composited layers for images with transparency (4 more).
    """
    if mode in _ONE_BYTE_MODES:
        stored = 1
    elif mode in _SIXTEEN_BIT_MODES:
        stored = 2
    else:
        stored = 4
    alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa", "P")  # "P" may carry transparency
    return width * height * (stored + 4 + (4 if alpha else 0))


# --- preprocessing --------------------------------------------------------------------------------


def open_image(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
) -> Image.Image:
    """Read a PNG's or JPEG's header (no pixels yet) and refuse what is too large to decode.

    Raises:
        InvalidImage: empty data or a broken header.
        UnsupportedImage: not a PNG or JPEG.
        ImageTooLarge: more than ``max_pixels`` pixels, more than ``max_decode_bytes`` to decode
            (see :func:`decode_cost`), or Pillow's decompression-bomb error.
    """
    if not data:
        raise InvalidImage("the uploaded file is empty")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as err:
        raise ImageTooLarge(f"refused by Pillow's decompression-bomb guard: {err}") from None
    except Image.UnidentifiedImageError:
        if data.startswith(_MAGIC):
            kind = "PNG" if data.startswith(_MAGIC[0]) else "JPEG"
            raise InvalidImage(
                f"the file starts like a {kind} but its header is truncated or corrupt"
            ) from None
        raise UnsupportedImage(
            f"the file is not a {' or '.join(FORMATS)} image (first bytes: {data[:8]!r})"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:  # a broken header
        raise InvalidImage(f"the image header is truncated or corrupt: {err}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImage(f"the image has no pixels ({width}×{height})")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"{width}×{height} = {width * height:,} pixels is more than the {max_pixels:,} allowed"
        )
    scans = jpeg_scans(data) if image.format == "JPEG" else 1
    if scans > MAX_JPEG_SCANS:
        raise ImageTooLarge(
            f"this JPEG has {scans:,} scans, more than the {MAX_JPEG_SCANS} allowed (each scan "
            "decodes the whole image again); save it as a baseline JPEG or a PNG"
        )
    cost = decode_cost(image.mode, width, height)
    if cost > max_decode_bytes:
        raise ImageTooLarge(
            f"decoding this {width}×{height} {image.mode} image takes about {cost:,} bytes of "
            f"memory, more than the {max_decode_bytes:,} allowed per upload; send a smaller "
            "image (28×28 is what the model sees)"
        )
    return image


def jpeg_scans(data: bytes) -> int:
    """The number of scans (SOS markers) in a JPEG, counted from its markers without decoding.

    Segments are skipped by their length; inside a scan's entropy-coded data a 0xFF byte is
    followed by 0x00 (stuffing) or a restart marker, so the next other marker ends the scan.
    """
    scans, i = 0, 2  # after SOI
    while i + 4 <= len(data):
        if data[i] != 0xFF:  # entropy-coded data: jump to the next 0xFF
            i = data.find(b"\xff", i)
            if i < 0:
                break
            continue
        marker = data[i + 1]
        if marker == 0xFF or marker == 0x00 or 0xD0 <= marker <= 0xD7:  # fill, stuffing, RSTn
            i += 1 if marker == 0xFF else 2
            continue
        if marker == 0xD9:  # EOI
            break
        scans += marker == 0xDA
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return scans


def decode_image(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
) -> Image.Image:
    """Decode a PNG or JPEG fully, refusing anything else, huge images and truncated files.

    The header is checked first (:func:`open_image`), so a small file that claims to be a
    100,000 × 100,000 image costs nothing. Then every pixel is decoded, so that a truncated
    file fails here and not later in a half-done resize. The EXIF orientation is *not* applied
    to the image (that would copy it); :func:`to_grey` applies it to the grey array.

    Pillow has a guard of its own, ``Image.MAX_IMAGE_PIXELS`` (about 89 megapixels): above it
    ``Image.open`` only warns (``DecompressionBombWarning``), above twice it (about 179 megapixels)
    ``Image.open`` raises ``DecompressionBombError`` before this function's own check runs. Both
    oversized cases end as :class:`ImageTooLarge` (413); with the default ``max_pixels`` the own
    check is the one that matters.

    Raises:
        InvalidImage: empty, truncated or corrupt data.
        UnsupportedImage: not a PNG or JPEG.
        ImageTooLarge: too many pixels or bytes to decode, or Pillow's decompression-bomb error.
    """
    image = open_image(data, max_pixels, max_decode_bytes)
    _load(image)
    return image


def _load(image: Image.Image) -> None:
    try:
        image.load()
    except Image.DecompressionBombError as err:
        raise ImageTooLarge(f"refused by Pillow's decompression-bomb guard: {err}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise InvalidImage(f"the image data is truncated or corrupt: {err}") from None


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1–8) of a decoded image; 1 (as stored) if absent or malformed."""
    try:
        value = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - malformed EXIF has many failure modes; it is only a hint
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def orient(grey: np.ndarray, orientation: int) -> np.ndarray:
    """``grey`` turned upright for an EXIF ``orientation`` (1–8), as a view (no copy).

    The same as Pillow's ``ImageOps.exif_transpose``, which would copy the whole image.
    """
    if orientation == 2:
        return grey[:, ::-1]
    if orientation == 3:
        return grey[::-1, ::-1]
    if orientation == 4:
        return grey[::-1]
    if orientation == 5:
        return grey.T
    if orientation == 6:
        return np.rot90(grey, -1)
    if orientation == 7:
        return np.rot90(grey, 2).T
    if orientation == 8:
        return np.rot90(grey, 1)
    return grey


def to_grey(image: Image.Image) -> np.ndarray:
    """The image as a 2-D ``uint8`` array, upright: alpha composited onto white, 16 bits scaled.

    16-bit images are scaled from 0…65535 to 0…255 (rounded, not clipped), a band of rows at a
    time with integer arithmetic, so the full image is never copied as ``float64``. The EXIF
    orientation is applied last, as a view of the grey array.
    """
    orientation = exif_orientation(image)
    if image.mode in (*_SIXTEEN_BIT_MODES, "I"):
        grey = _scale_to_8_bits(image)
    elif image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        white = Image.new("L", image.size, 255)
        grey = np.asarray(Image.composite(rgba.convert("L"), white, rgba.getchannel("A")))
    else:
        grey = np.asarray(image.convert("L"), dtype=np.uint8)
    return orient(grey, orientation)


def _scale_to_8_bits(image: Image.Image) -> np.ndarray:
    width, height = image.size
    grey = np.empty((height, width), dtype=np.uint8)
    for top in range(0, height, _BAND_ROWS):
        bottom = min(top + _BAND_ROWS, height)
        band = np.asarray(image.crop((0, top, width, bottom)), dtype=np.int64)
        # round(v × 255 / 65535) in integers: v × 255 / 65535 is never exactly x.5
        grey[top:bottom] = (np.clip(band, 0, 65535) * 255 + 32767) // 65535
    return grey


def needs_inversion(grey: np.ndarray) -> bool:
    """``True`` when the border of the image is light (mean above 127): a dark-on-light picture,
    the opposite of Fashion-MNIST's light garment on black."""
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    return float(border.mean()) > 127


def crop_to_content(grey: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """The smallest box holding every pixel brighter than ``threshold`` × the brightest one (the
    garment, once it is light on dark); the whole image if nothing is. A view, not a copy."""
    level = threshold * int(grey.max())
    rows = np.flatnonzero(grey.max(axis=1) > level)
    cols = np.flatnonzero(grey.max(axis=0) > level)
    if rows.size == 0:
        return grey
    return grey[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def fit_to_square(grey: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Resize the longer side to ``size`` (Lanczos, aspect kept) and pad the shorter one with
    black, centred. A ``size × size`` input is returned unchanged (as a copy)."""
    if grey.shape == (size, size):
        return grey.copy()
    padded = ImageOps.pad(
        Image.fromarray(np.ascontiguousarray(grey), mode="L"),
        (size, size),
        method=Image.Resampling.LANCZOS,
        color=0,
    )
    return np.asarray(padded, dtype=np.uint8)


def stretch_contrast(grey: np.ndarray) -> np.ndarray:
    """Scale the pixels so that the brightest is 255 (as in most Fashion-MNIST images)."""
    top = int(grey.max())
    if top in (0, 255):
        return grey.copy()
    return np.rint(grey.astype(np.float32) * (255 / top)).astype(np.uint8)


def normalise_array(pixels: np.ndarray) -> np.ndarray:
    """``uint8 [28, 28]`` → ``float32 [1, 1, 28, 28]``, scaled to [0, 1] and normalised."""
    x = pixels.astype(np.float32) / np.float32(255.0)
    return ((x - np.float32(MEAN)) / np.float32(STD)).reshape(1, 1, *pixels.shape)


def normalise(pixels: np.ndarray) -> torch.Tensor:
    """:func:`normalise_array` as a ``torch.Tensor`` (for a PyTorch model)."""
    import torch

    return torch.from_numpy(normalise_array(pixels))


def preprocess_array(
    data: bytes,
    *,
    invert: bool | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
    budget: MemoryBudget | None = None,
) -> np.ndarray:
    """The bytes of a PNG or JPEG → the normalised ``float32 [1, 1, 28, 28]`` array the model
    expects (NumPy; no torch).

    Args:
        data: the file's bytes.
        invert: ``None`` inverts a light-background image (see :func:`needs_inversion`);
            ``True``/``False`` force it.
        max_pixels: the largest image accepted (width × height).
        max_decode_bytes: the most memory one upload may take to decode (:func:`decode_cost`).
        budget: a server's shared :class:`MemoryBudget`; the decode waits for its share.

    Raises:
        PreprocessError: (a ``ValueError``) with ``.status`` 400, 413, 415 or 503 and a message.
    """
    image = open_image(data, max_pixels, max_decode_bytes)
    cost = decode_cost(image.mode, *image.size)
    with budget.reserve(cost) if budget is not None else _nothing():
        _load(image)
        grey = to_grey(image)
        image.close()
        del image
        if needs_inversion(grey) if invert is None else invert:
            grey = 255 - grey
        if grey.shape != (SIZE, SIZE):  # 28×28 is taken to be in Fashion-MNIST's format already
            grey = stretch_contrast(fit_to_square(crop_to_content(grey)))
    return normalise_array(grey)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def preprocess_image(
    data: bytes,
    *,
    invert: bool | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
) -> torch.Tensor:
    """:func:`preprocess_array` as a ``torch.Tensor`` ``[1, 1, 28, 28]`` (for a PyTorch model).

    Raises:
        PreprocessError: (a ``ValueError``) with ``.status`` 400, 413 or 415 and a message.
    """
    import torch

    x = preprocess_array(
        data, invert=invert, max_pixels=max_pixels, max_decode_bytes=max_decode_bytes
    )
    return torch.from_numpy(x)


def encode_png(pixels: Any) -> bytes:
    """A ``uint8`` 2-D array or tensor (e.g. a Fashion-MNIST image) as PNG bytes."""
    array = pixels.numpy() if hasattr(pixels, "numpy") else np.asarray(pixels)
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()
