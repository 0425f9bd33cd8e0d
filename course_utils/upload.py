"""Turning an uploaded image into the model's input: the preprocessing that chapter 9 serves.

Preprocessing (:func:`preprocess_image`) turns the bytes of a PNG or JPEG of any size and mode
into the tensor the model was trained on, in four documented steps:

1. **decode safely**: PNG and JPEG only, at most ``max_pixels`` pixels (checked from the header,
   before any pixel is decoded; Pillow's own, looser guard, which raises
   ``DecompressionBombError`` inside ``Image.open`` above twice ``Image.MAX_IMAGE_PIXELS``, is
   caught too); EXIF rotation applied;
2. **greyscale**: transparent pixels are composited onto white (a cut-out product photo),
   16-bit images are scaled (not clipped) to 8 bits, colour is converted with ITU-R 601 luma;
3. **polarity**: Fashion-MNIST shows a *light garment on a black background* (its images were
   negated). A catalogue photo is the opposite: a dark garment on white. With ``invert=None``
   (the default) the image is inverted when its border is brighter than mid-grey, i.e. when the
   background is light; ``True``/``False`` force it;
4. **frame like the data set**: Zalando trimmed each product photo to the garment, resized its
   longer side to 28 pixels and padded the shorter side (chapter 9 measures how many training
   images touch two opposite edges and reach 255). So: crop to the bright content, resize the longer
   side to 28 (Lanczos, aspect kept), pad with black, centred, and stretch the contrast so that
   the brightest pixel is 255. Then scale to [0, 1] and normalise with the training mean and std.

An image that is already 28×28 skips step 4 (apart from polarity, it is taken to be in the data
set's format), so a Fashion-MNIST image goes through unchanged and the API predicts exactly what
the model predicts on the test tensors.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageOps

from .data import MEAN, STD

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FORMATS",
    "SIZE",
    "ImageTooLarge",
    "InvalidImage",
    "PreprocessError",
    "UnsupportedImage",
    "catalogue_photo",
    "crop_to_content",
    "decode_image",
    "encode_png",
    "fit_to_square",
    "needs_inversion",
    "normalise",
    "preprocess_image",
    "stretch_contrast",
    "to_grey",
]

FORMATS: tuple[str, ...] = ("PNG", "JPEG")
DEFAULT_MAX_PIXELS = 4096 * 4096  # 16.8 megapixels: checked from the header before decoding
SIZE = 28
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")  # how PNG and JPEG files begin


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
    """An image with more pixels than allowed (a possible decompression bomb)."""

    status = 413
    error = "image too large"


# --- preprocessing --------------------------------------------------------------------------------


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode a PNG or JPEG fully, refusing anything else, huge images and truncated files.

    The pixel count is checked from the header before decoding, so a small file that claims to be
    a 100,000 × 100,000 image costs nothing. EXIF orientation (phone photos) is applied.

    Pillow has a guard of its own, ``Image.MAX_IMAGE_PIXELS`` (about 89 megapixels): above it
    ``Image.open`` only warns (``DecompressionBombWarning``), above twice it (about 179 megapixels)
    ``Image.open`` raises ``DecompressionBombError`` before this function's own check runs. Both
    oversized cases end as :class:`ImageTooLarge` (413); with the default ``max_pixels`` the own
    check is the one that matters.

    Raises:
        InvalidImage: empty, truncated or corrupt data.
        UnsupportedImage: not a PNG or JPEG.
        ImageTooLarge: more than ``max_pixels`` pixels, or Pillow's decompression-bomb error.
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
    except (OSError, ValueError, SyntaxError) as err:  # a broken header
        raise InvalidImage(f"the image header is truncated or corrupt: {err}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImage(f"the image has no pixels ({width}×{height})")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"{width}×{height} = {width * height:,} pixels is more than the {max_pixels:,} allowed"
        )
    try:
        image.load()  # decode now: a truncated file fails here, not later in a half-done resize
        return ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as err:
        raise ImageTooLarge(f"refused by Pillow's decompression-bomb guard: {err}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise InvalidImage(f"the image data is truncated or corrupt: {err}") from None


def to_grey(image: Image.Image) -> np.ndarray:
    """The image as a 2-D ``uint8`` array: alpha composited onto white, 16 bits scaled to 8."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit PNG: 0…65535 → 0…255, not clipped
        wide = np.asarray(image, dtype=np.float64)
        return np.clip(np.rint(wide * 255 / 65535), 0, 255).astype(np.uint8)
    if image.mode == "P" or "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def needs_inversion(grey: np.ndarray) -> bool:
    """``True`` when the border of the image is light (mean above 127): a dark-on-light picture,
    the opposite of Fashion-MNIST's light garment on black."""
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    return float(border.mean()) > 127


def crop_to_content(grey: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """The smallest box holding every pixel brighter than ``threshold`` × the brightest one (the
    garment, once it is light on dark); the whole image if nothing is."""
    mask = grey > threshold * int(grey.max())
    if not mask.any():
        return grey
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return grey[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def fit_to_square(grey: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Resize the longer side to ``size`` (Lanczos, aspect kept) and pad the shorter one with
    black, centred. A ``size × size`` input is returned unchanged."""
    if grey.shape == (size, size):
        return grey.copy()
    padded = ImageOps.pad(
        Image.fromarray(grey, mode="L"), (size, size), method=Image.Resampling.LANCZOS, color=0
    )
    return np.asarray(padded, dtype=np.uint8)


def stretch_contrast(grey: np.ndarray) -> np.ndarray:
    """Scale the pixels so that the brightest is 255 (as in most Fashion-MNIST images)."""
    top = int(grey.max())
    if top in (0, 255):
        return grey.copy()
    return np.rint(grey.astype(np.float32) * (255 / top)).astype(np.uint8)


def normalise(pixels: np.ndarray) -> torch.Tensor:
    """``uint8 [28, 28]`` → ``float32 [1, 1, 28, 28]``, scaled to [0, 1] and normalised."""
    x = torch.from_numpy(pixels.astype(np.float32) / 255.0)
    return ((x - MEAN) / STD).reshape(1, 1, *pixels.shape)


def preprocess_image(
    data: bytes, *, invert: bool | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> torch.Tensor:
    """The bytes of a PNG or JPEG → the normalised ``[1, 1, 28, 28]`` tensor the model expects.

    Args:
        data: the file's bytes.
        invert: ``None`` inverts a light-background image (see :func:`needs_inversion`);
            ``True``/``False`` force it.
        max_pixels: the largest image accepted (width × height).

    Raises:
        PreprocessError: (a ``ValueError``) with ``.status`` 400, 413 or 415 and a message.
    """
    grey = to_grey(decode_image(data, max_pixels))
    if needs_inversion(grey) if invert is None else invert:
        grey = 255 - grey
    if grey.shape != (SIZE, SIZE):  # 28×28 is taken to be in Fashion-MNIST's format already
        grey = stretch_contrast(fit_to_square(crop_to_content(grey)))
    return normalise(grey)


def encode_png(pixels: np.ndarray | torch.Tensor) -> bytes:
    """A ``uint8`` 2-D array (e.g. a Fashion-MNIST image) as PNG bytes."""
    array = pixels.numpy() if isinstance(pixels, torch.Tensor) else np.asarray(pixels)
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def catalogue_photo(
    pixels: np.ndarray | torch.Tensor,
    size: tuple[int, int] = (150, 110),
    tint: tuple[int, int, int] = (40, 60, 110),
    quality: int = 90,
) -> bytes:
    """A Fashion-MNIST image dressed up as a shop photo: a tinted garment on white, enlarged into
    a ``size`` (width, height) canvas with margins, saved as an RGB JPEG.

    It is the same garment, so a correct preprocessing pipeline should still classify it.
    """
    array = pixels.numpy() if isinstance(pixels, torch.Tensor) else np.asarray(pixels)
    alpha = array.astype(np.float32)[..., None] / 255  # how much garment is in each pixel
    rgb = (255 * (1 - alpha) + np.asarray(tint, np.float32) * alpha).round().astype(np.uint8)
    width, height = size
    side = int(min(width, height) * 0.9)
    garment = Image.fromarray(rgb, mode="RGB").resize((side, side), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", size, "white")
    canvas.paste(garment, ((width - side) // 2, (height - side) // 2))
    buffer = io.BytesIO()
    canvas.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
