"""Bad and unusual image files, made on purpose: a decompression bomb and one example of each
kind of input :class:`course_utils.pngfolder.PNGFolder` has a policy for (chapter 7 and the
tests feed them to the loaders; the serving tests send the bomb), a huge 16-bit PNG (the
serving appendix's memory test) and a Fashion-MNIST image dressed up as a shop photo (chapter
9's train/serve skew measurement)."""

from __future__ import annotations

import functools
import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["catalogue_photo", "make_bad_examples", "sixteen_bit_png", "write_decompression_bomb"]


def write_decompression_bomb(path: str | Path, width: int = 30000, height: int = 30000) -> int:
    """Write a black 1-bit PNG of ``width`` × ``height`` pixels, tiny on disk, and return its
    size in bytes: a decompression bomb (30000×30000 is about 110 KB on disk, 900 MB once Pillow
    decodes it). Written chunk by chunk; no pixel array is ever built.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grey
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    data += chunk(b"IDAT", _black_rows(width, height)) + chunk(b"IEND", b"")
    Path(path).write_bytes(data)
    return len(data)


@functools.lru_cache(maxsize=4)
def _black_rows(width: int, height: int) -> bytes:
    """The zlib stream of ``height`` 1-bit rows of zeros, each with its filter byte."""
    row, compressor = bytes(1 + (width + 7) // 8), zlib.compressobj(9)
    parts = [compressor.compress(row * min(1000, height - i)) for i in range(0, height, 1000)]
    return b"".join(parts) + compressor.flush()


def make_bad_examples(folder: str | Path, good: np.ndarray) -> dict[str, str]:
    """Write one example of each kind of bad or unusual input into the class folder ``folder``
    (created if needed), the unusual-but-valid ones made from ``good``, a uint8 ``[28, 28]`` image.

    Returns ``{file name: expected outcome}``, where the outcome is ``"ok"`` (accepted,
    converted), ``"bad"`` (skipped or raised per ``on_error``) or ``"ignored"``. The broken link
    is left out where the system cannot make symbolic links.
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
    (folder / "as_eps.png").write_text(
        "%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n"
        "newpath 4 4 moveto 24 24 lineto stroke showpage\n%%EOF\n"
    )
    write_decompression_bomb(folder / "bomb.png")
    (folder / "subfolder").mkdir(exist_ok=True)
    grey.save(folder / "subfolder" / "nested.png")
    rgba = np.zeros((28, 28, 4), dtype=np.uint8)
    rgba[..., :3] = good[..., None]
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(folder / "rgba.png")
    Image.fromarray(good.astype(np.uint16) * 257).save(folder / "sixteen_bit.png")
    grey.convert("P").save(folder / "palette.png")
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(folder / "wrong_size.png")
    expected = dict.fromkeys(["good.png", "rgba.png", "sixteen_bit.png", "palette.png"], "ok")
    expected |= dict.fromkeys(["notes.txt", ".DS_Store", "._good.png"], "ignored")
    bad = ["truncated.png", "not_an_image.png", "as_jpeg.png", "as_eps.png", "bomb.png"]
    expected |= dict.fromkeys([*bad, "subfolder", "wrong_size.png"], "bad")
    try:
        (folder / "broken_link.png").symlink_to("deleted_original.png")
    except (OSError, NotImplementedError):  # Windows without the privilege
        return expected
    return {**expected, "broken_link.png": "bad"}


def sixteen_bit_png(side: int) -> bytes:
    """A ``side × side`` 16-bit greyscale PNG of a bright garment-like block on black (a few
    dozen kB on disk, 2 bytes per pixel decoded)."""
    pixels = np.zeros((side, side), dtype=np.uint16)
    pixels[side // 8 : -side // 8, side // 4 : -side // 4] = 40_000
    pixels[side // 4 : side // 2, side // 3 : -side // 3] = 65_535
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def catalogue_photo(
    pixels: Any,
    size: tuple[int, int] = (150, 110),
    tint: tuple[int, int, int] = (40, 60, 110),
    quality: int = 90,
) -> bytes:
    """A Fashion-MNIST image (array or tensor) dressed up as a shop photo: a tinted garment on
    white, enlarged into a ``size`` (width, height) canvas with margins, saved as an RGB JPEG.

    It is the same garment, so a correct preprocessing pipeline should still classify it.
    """
    array = pixels.numpy() if hasattr(pixels, "numpy") else np.asarray(pixels)
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
