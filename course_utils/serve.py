"""Serving the chapter-1 model: the upload preprocessing, a Flask app factory, a background server
and a load benchmark.

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

The API (:func:`create_app`): ``POST /predict`` with a multipart field ``file`` returns
``{"label", "class_index", "probabilities": [{"label", "class_index", "probability"}, …]}`` (the
top ``k``, ``?top_k=`` from 1 to 10, default 3); ``GET /health`` says the model is loaded. Every
bad request gets a JSON ``{"error", "message"}`` with a 4xx status, never a traceback. Chapter 9
writes the same routes and error handlers in the notebook and checks that both apps answer alike.

Command line (``python -m course_utils.serve``):

- ``serve --model PATH [--port N]``: run the API under waitress on 127.0.0.1;
- ``bench [--model PATH] [--requests 2000] [--concurrency 8]``: start the API under waitress in a
  subprocess on a free loopback port, send the requests, print p50/p99 latency, throughput and the
  number of errors, and stop the server (:func:`bench_sweep` does it for several concurrencies
  against one server).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flask import Flask, jsonify, request
from PIL import Image, ImageOps
from torch import nn
from werkzeug.exceptions import HTTPException

from .data import CLASSES, MEAN, STD
from .paths import REPO_ROOT
from .train import load_checkpoint

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "FORMATS",
    "WAITRESS_MAX_BODY",
    "BenchResult",
    "ImageTooLarge",
    "InvalidImage",
    "PreprocessError",
    "ServerThread",
    "UnsupportedImage",
    "bench",
    "bench_sweep",
    "catalogue_photo",
    "create_app",
    "crop_to_content",
    "decode_image",
    "encode_png",
    "fit_to_square",
    "needs_inversion",
    "normalise",
    "predict_response",
    "preprocess_image",
    "serve_in_background",
    "stretch_contrast",
    "to_grey",
]

FORMATS: tuple[str, ...] = ("PNG", "JPEG")
DEFAULT_MAX_BYTES = 8 * 1024 * 1024  # 8 MiB: a 12-megapixel phone JPEG fits, a video does not
DEFAULT_MAX_PIXELS = 4096 * 4096  # 16.8 megapixels: checked from the header before decoding
# waitress buffers a whole request body before Flask sees it; past this it refuses the request
# itself (a plain-text 413). Below it, Flask's MAX_CONTENT_LENGTH answers with a JSON 413.
WAITRESS_MAX_BODY = 8 * DEFAULT_MAX_BYTES
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


# --- the API --------------------------------------------------------------------------------------


def predict_response(model: nn.Module, x: torch.Tensor, top_k: int = 3) -> dict[str, Any]:
    """The ``/predict`` JSON body for one input ``x`` of shape ``[1, 1, 28, 28]``.

    Runs under ``torch.inference_mode()``; the probabilities are the softmax of the logits, the
    ``top_k`` largest first, as plain Python floats and ints (JSON-serialisable).
    """
    with torch.inference_mode():
        probs = torch.softmax(model(x), dim=1)[0]
    values, indices = probs.topk(top_k)
    best = int(indices[0])
    return {
        "label": CLASSES[best],
        "class_index": best,
        "probabilities": [
            {"label": CLASSES[int(i)], "class_index": int(i), "probability": float(p)}
            for p, i in zip(values, indices, strict=True)
        ],
    }


def _error(status: int, error: str, message: str) -> tuple[Any, int]:
    """A JSON error body ``{"error", "message"}`` with its status."""
    return jsonify(error=error, message=message), status


def create_app(
    model_path: str | Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    default_top_k: int = 3,
) -> Flask:
    """A Flask app that serves the checkpoint at ``model_path`` (made by ``save_checkpoint``).

    The routes and error handlers are the ones chapter 9 writes in the notebook, in a factory:
    each call builds a fresh app with its own model and limits, and nothing is loaded at import
    time. The model is loaded once, here, on the CPU in eval mode; every request reuses it.

    Args:
        model_path: the ``.pt`` checkpoint.
        max_bytes: the largest request body (Flask's ``MAX_CONTENT_LENGTH``; larger → 413).
        max_pixels: the largest image, width × height (larger → 413).
        default_top_k: how many classes ``/predict`` returns without ``?top_k=``.

    Raises:
        course_utils.train.CheckpointError: the checkpoint is missing or unreadable (at start-up,
            not at the first request).
    """
    model, _ = load_checkpoint(model_path, map_location="cpu")
    model.eval()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_bytes
    app.json.sort_keys = False  # keep the probabilities' order (and label first) in the JSON
    app.extensions["course_model"] = model

    @app.get("/health")
    def health() -> Any:
        return jsonify(status="ok", model=Path(model_path).name, classes=list(CLASSES))

    @app.post("/predict")
    def predict() -> Any:
        raw_k = request.args.get("top_k", str(default_top_k))
        if not raw_k.isdigit() or not 1 <= int(raw_k) <= len(CLASSES):
            return _error(400, "bad parameter", f"top_k must be 1 to {len(CLASSES)}, got {raw_k!r}")
        upload = request.files.get("file")  # reading the body: over max_bytes raises 413 here
        if upload is None:
            fields = sorted(set(request.files) | set(request.form))
            return _error(
                400,
                "no file",
                "send the image as multipart/form-data in a field named 'file' "
                f"(fields received: {fields or 'none'})",
            )
        try:
            x = preprocess_image(upload.read(), max_pixels=max_pixels)
        except PreprocessError as err:
            return _error(err.status, err.error, str(err))
        return jsonify(predict_response(model, x, int(raw_k)))

    @app.errorhandler(413)
    def too_large(err: HTTPException) -> Any:
        message = f"the upload is larger than the {max_bytes:,} bytes allowed"
        return _error(413, "request entity too large", message)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> Any:  # 400, 404, 405 … raised by Flask itself
        response, status = _error(err.code or 500, err.name.lower(), err.description or err.name)
        if err.code == 405 and err.valid_methods:
            response.headers["Allow"] = ", ".join(err.valid_methods)
        return response, status

    @app.errorhandler(Exception)
    def unexpected(err: Exception) -> Any:  # never a traceback to the client; logged server-side
        app.logger.exception("unhandled error")
        return _error(500, "internal server error", "the server failed; see its log")

    return app


# --- a real server in the background --------------------------------------------------------------


class ServerThread:
    """A waitress server for ``app`` on ``127.0.0.1`` and a free port, run in a daemon thread.

    In a script, prefer :func:`serve_in_background` (a context manager, so the server always
    stops); in a notebook, where the server must outlive one cell, call :meth:`start` and
    :meth:`stop` yourself.
    """

    def __init__(self, app: Flask, threads: int = 8) -> None:
        from waitress import create_server

        logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "Task queue depth is 1"
        self.server = create_server(
            app, host="127.0.0.1", port=0, threads=threads, max_request_body_size=WAITRESS_MAX_BODY
        )
        self.port: int = self.server.effective_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.run, name="waitress", daemon=True)

    def start(self) -> ServerThread:
        """Start serving."""
        self.thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close every connection from the server's own loop, stop the workers, join the thread."""
        from waitress import wasyncore

        def close_all() -> None:
            wasyncore.close_all(self.server._map)

        self.server.trigger.pull_trigger(close_all)
        self.thread.join(timeout)
        self.server.task_dispatcher.shutdown()
        if self.thread.is_alive():
            raise RuntimeError(f"the server thread did not stop within {timeout} s")


@contextmanager
def serve_in_background(model_path: str | Path, threads: int = 8, **app_kw: Any) -> Iterator[str]:
    """Serve :func:`create_app` under waitress in a thread; yields the base URL, stops on exit."""
    server = ServerThread(create_app(model_path, **app_kw), threads=threads).start()
    try:
        yield server.url
    finally:
        server.stop()


# --- the load benchmark ---------------------------------------------------------------------------


@dataclass
class BenchResult:
    """What :func:`bench` measured (latencies in milliseconds)."""

    requests: int
    concurrency: int
    errors: int
    wrong: int
    seconds: float
    throughput: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    latencies_ms: list[float]

    def summary(self) -> str:
        """One readable paragraph."""
        return (
            f"{self.requests:,} requests at concurrency {self.concurrency} in "
            f"{self.seconds:.1f} s: {self.throughput:,.0f} requests/s; "
            f"latency p50 {self.p50_ms:.1f} ms, "
            f"p90 {self.p90_ms:.1f} ms, p99 {self.p99_ms:.1f} ms, max {self.max_ms:.1f} ms; "
            f"{self.errors} errors, {self.wrong} wrong predictions"
        )


def _multipart(data: bytes, boundary: str = "course-utils-bench") -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with one field ``file``, and its Content-Type."""
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="image.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return (
        head + data + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


def _run_load(
    url: str,
    bodies: Sequence[bytes],
    expected: Sequence[int],
    n: int,
    concurrency: int,
    deadline_s: float,
) -> tuple[list[float], int, int, float]:
    """Send ``n`` POSTs (cycling over ``bodies``) from ``concurrency`` threads, one keep-alive
    connection each. Returns (latencies in ms, errors, wrong predictions, wall seconds).

    The client is the standard library's ``http.client`` with pre-built bodies: it costs far less
    CPU per request than ``requests``, so on a small machine it steals less from the server.
    """
    host, port = url.removeprefix("http://").split(":")
    forms = [_multipart(body) for body in bodies]
    local = threading.local()
    stop_at = time.monotonic() + deadline_s

    def one(i: int) -> tuple[float, bool, bool]:
        if time.monotonic() > stop_at:
            return math.nan, True, False
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection(host, int(port), timeout=10)
        body, content_type = forms[i % len(forms)]
        start = time.perf_counter()
        try:
            local.conn.request("POST", "/predict", body, {"Content-Type": content_type})
            response = local.conn.getresponse()
            payload = response.read()
            ok = response.status == 200
            wrong = ok and json.loads(payload)["class_index"] != expected[i % len(expected)]
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            local.conn.close()
            del local.conn
            ok, wrong = False, False
        return (time.perf_counter() - start) * 1000, not ok, wrong

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(n)))
    seconds = time.perf_counter() - start
    latencies = [ms for ms, _, _ in results if not math.isnan(ms)]
    return latencies, sum(e for _, e, _ in results), sum(w for *_, w in results), seconds


def _bench_images(n: int = 200) -> tuple[list[bytes], torch.Tensor]:
    """``n`` Fashion-MNIST test images as PNG bytes (random images if the data is missing)."""
    from .data import DataUnavailableError, load_tensors

    try:
        images = load_tensors()["test"].images[:n]
    except DataUnavailableError:
        images = torch.randint(0, 256, (n, SIZE, SIZE), dtype=torch.uint8)
    return [encode_png(img) for img in images], images


@contextmanager
def _server_process(model_path: Path, threads: int, timeout: float = 60) -> Iterator[str]:
    """``python -m course_utils.serve serve`` in a subprocess; yields its URL, stops it on exit."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "course_utils.serve", "serve", "--model", str(model_path)]
    proc = subprocess.Popen(
        [*cmd, "--port", "0", "--threads", str(threads)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO_ROOT,
    )
    try:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not line or not line[0].startswith("listening on "):
            raise RuntimeError(f"the server did not start within {timeout} s: {line!r}")
        yield line[0].split()[-1]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def bench(
    model_path: str | Path | None = None,
    n_requests: int = 2000,
    concurrency: int = 8,
    *,
    threads: int = 8,
    warmup: int = 50,
    deadline_s: float = 300.0,
) -> BenchResult:
    """Load-test the API: a waitress subprocess on a free loopback port, ``n_requests`` POSTs of
    28×28 test-image PNGs from ``concurrency`` client threads (after ``warmup`` untimed ones).

    Every response must be a 200 whose ``class_index`` equals the model's own prediction on the
    same image; anything else counts as an error (``errors``) or a wrong answer (``wrong``).
    Requests not sent within ``deadline_s`` count as errors. Without ``model_path`` it serves the
    chapter-1 checkpoint, or an untrained model (latency does not depend on the weights).
    """
    return bench_sweep(
        model_path, n_requests, [concurrency], threads=threads, warmup=warmup, deadline_s=deadline_s
    )[0]


def bench_sweep(
    model_path: str | Path | None = None,
    n_requests: int = 2000,
    concurrencies: Sequence[int] = (1, 2, 4, 8),
    *,
    threads: int = 8,
    warmup: int = 50,
    deadline_s: float = 300.0,
) -> list[BenchResult]:
    """:func:`bench` at each of ``concurrencies`` in turn, against one server process (started
    once), so the levels differ only in how many clients send at the same time.

    Returns:
        One :class:`BenchResult` per concurrency, in the order given.
    """
    from .baseline import BASELINE
    from .models import FashionCNN
    from .train import checkpoint_path, save_checkpoint

    levels = list(concurrencies)
    if not 1 <= n_requests <= 100_000 or not levels or not all(1 <= c <= 64 for c in levels):
        raise ValueError("n_requests must be 1…100,000 and each concurrency 1…64")
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        if model_path is None:
            found = [checkpoint_path(BASELINE), checkpoint_path(BASELINE, quick=True)]
            model_path = next((p for p in found if p.exists()), None)
            if model_path is None:
                torch.manual_seed(0)
                model_path = save_checkpoint(FashionCNN(), Path(scratch) / "untrained.pt")
        model, _ = load_checkpoint(model_path)
        bodies, images = _bench_images()
        with torch.inference_mode():
            x = images.unsqueeze(1).float().div(255).sub(MEAN).div(STD)
            expected = model.eval()(x).argmax(1).tolist()
        with _server_process(Path(model_path), threads) as url:
            for concurrency in levels:
                _run_load(url, bodies, expected, warmup, concurrency, deadline_s)
                load = _run_load(url, bodies, expected, n_requests, concurrency, deadline_s)
                results.append(_bench_result(n_requests, concurrency, *load))
    return results


def _bench_result(
    n_requests: int,
    concurrency: int,
    latencies: list[float],
    errors: int,
    wrong: int,
    seconds: float,
) -> BenchResult:
    ms = np.asarray(latencies) if latencies else np.asarray([float("nan")])
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return BenchResult(
        requests=n_requests,
        concurrency=concurrency,
        errors=errors,
        wrong=wrong,
        seconds=seconds,
        throughput=n_requests / seconds,
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        max_ms=float(ms.max()),
        latencies_ms=[float(v) for v in ms],
    )


def _serve(model_path: Path, port: int, threads: int, torch_threads: int) -> None:
    from waitress import create_server

    torch.set_num_threads(torch_threads)  # batch-1 requests: intra-op threads only oversubscribe
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "Task queue depth is 1" …
    server = create_server(
        create_app(model_path),
        host="127.0.0.1",
        port=port,
        threads=threads,
        max_request_body_size=WAITRESS_MAX_BODY,
    )
    print(f"listening on http://127.0.0.1:{server.effective_port}", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM too → KeyboardInterrupt
    try:
        server.run()  # waitress closes cleanly on KeyboardInterrupt
    finally:
        server.close()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``serve`` or ``bench``); returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m course_utils.serve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="run the API under waitress on 127.0.0.1")
    run.add_argument("--model", type=Path, required=True, help="checkpoint (.pt)")
    run.add_argument("--port", type=int, default=8000, help="0 picks a free port (default 8000)")
    run.add_argument("--threads", type=int, default=8, help="waitress worker threads")
    run.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads")
    load = sub.add_parser("bench", help="load-test the API on a free loopback port")
    load.add_argument("--model", type=Path, default=None, help="default: chapter 1's checkpoint")
    load.add_argument("--requests", type=int, default=2000, help="timed requests (≤ 100,000)")
    load.add_argument("--concurrency", type=int, default=8, help="client threads (≤ 64)")
    load.add_argument("--threads", type=int, default=8, help="waitress worker threads")
    load.add_argument("--deadline", type=float, default=300.0, help="stop sending after (s)")
    load.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.command == "serve":
        with suppress(KeyboardInterrupt):
            _serve(args.model, args.port, args.threads, args.torch_threads)
        return 0
    result = bench(
        args.model,
        args.requests,
        args.concurrency,
        threads=args.threads,
        deadline_s=args.deadline,
    )
    if args.json:
        print(json.dumps({k: v for k, v in asdict(result).items() if k != "latencies_ms"}))
    else:
        print(result.summary())
    return 0 if result.errors == 0 and result.wrong == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
