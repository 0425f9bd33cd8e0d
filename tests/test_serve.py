"""The serving API: preprocessing, the exported model behind Flask, good and bad requests, a fuzz
test, hardening (limits, memory, EXIF), a real waitress server and the benchmarks.

Cost: about 40 s on 2 CPU cores (one ONNX export, a few server subprocesses, a 500-body fuzz).
"""

from __future__ import annotations

import ast
import io
import json
import logging
import random
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

import flask
import numpy as np
import pytest
import requests
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from course_utils.artefacts import ModelFileError, save_atomically
from course_utils.bad_files import catalogue_photo, sixteen_bit_png
from course_utils.data import CLASSES, MEAN, STD
from course_utils.paths import REPO_ROOT
from course_utils.train import save_checkpoint
from serving import form_limits, inference, loadtest, serve, upload
from serving.loadtest import bench, bench_sweep
from serving.serve import create_app, serve_in_background
from serving.upload import (
    ImageTooLarge,
    InvalidImage,
    UnsupportedImage,
    encode_png,
    preprocess_image,
)


def export_onnx(model: torch.nn.Module, path: Path) -> Path:
    """The model as ONNX, dynamic batch, saved with its SHA-256 sidecar (as chapter 8 does)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        model, (torch.zeros(2, 1, 28, 28),), dynamo=True, dynamic_shapes={"x": {0: batch}}
    )
    return save_atomically(program.save, path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, model: torch.nn.Module) -> Path:
    """The model three ways: ``untrained.onnx``, ``untrained.pt2`` (both with sidecars) and the
    state_dict checkpoint ``untrained.pt``."""
    folder = tmp_path_factory.mktemp("model")
    export_onnx(model, folder / "untrained.onnx")
    program = torch.export.export(
        model,
        (torch.zeros(2, 1, 28, 28),),
        dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}},
    )
    save_atomically(lambda tmp: torch.export.save(program, tmp), folder / "untrained.pt2")
    save_checkpoint(model, folder / "untrained.pt")
    return folder


@pytest.fixture(scope="module")
def model_path(model_dir: Path) -> Path:
    """What the server serves: the ONNX export."""
    return model_dir / "untrained.onnx"


@pytest.fixture(scope="module")
def client(model_path: Path):
    return create_app(model_path).test_client()


@pytest.fixture(scope="module")
def garments() -> torch.Tensor:
    """Garment-like 28×28 uint8 images: a bright blob on black, as in Fashion-MNIST."""
    gen = torch.Generator().manual_seed(0)
    images = torch.zeros(16, 28, 28, dtype=torch.uint8)
    for i in range(16):
        top, left = torch.randint(2, 8, (2,), generator=gen).tolist()
        h, w = torch.randint(12, 20, (2,), generator=gen).tolist()
        low = int(torch.randint(60, 200, (1,), generator=gen))
        patch = torch.linspace(low, 255, w).round().to(torch.uint8).expand(h, w)  # smooth shading
        images[i, top : top + h, left : left + w] = patch
    return images


def encode(image: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def reference_input(pixels: torch.Tensor) -> torch.Tensor:
    """How the training pipeline (TensorLoader) normalises a uint8 image."""
    return pixels.float().div(255).sub(MEAN).div(STD).reshape(1, 1, 28, 28)


def post(client, data: bytes | None, field: str = "file", query: str = ""):
    form = {} if data is None else {field: (io.BytesIO(data), "upload.png")}
    return client.post(f"/predict{query}", data=form, content_type="multipart/form-data")


def assert_json_error(response, status: int, words: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    body = response.get_json()
    assert set(body) == {"error", "message"}
    assert words.lower() in body["message"].lower(), body
    assert "Traceback" not in response.get_data(as_text=True)


def run_python(code: str, timeout: float = 120) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line, returned as a dict."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the package ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module", [form_limits, inference, loadtest, serve, upload], ids=lambda m: m.__name__
)
def test_each_module_exports_only_what_it_defines_in_at_most_500_lines(module) -> None:
    """Each name is imported from the module that defines it (``serve`` once re-exported some 30
    names of the others, for chapter 9 to import them all from one place), and no module of the
    package outgrows 500 lines."""
    source = Path(module.__file__).read_text()
    defined = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.Assign):
            defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            defined.add(node.target.id)
    assert set(module.__all__) <= defined, f"not defined here: {set(module.__all__) - defined}"
    assert len(source.splitlines()) <= 500


# --- preprocessing --------------------------------------------------------------------------------


def test_a_fashion_mnist_png_is_exactly_the_training_input(garments: torch.Tensor) -> None:
    for pixels in garments:
        x = preprocess_image(encode_png(pixels))
        assert x.shape == (1, 1, 28, 28) and x.dtype == torch.float32
        torch.testing.assert_close(x, reference_input(pixels), rtol=0, atol=1e-6)


def test_dark_on_light_is_inverted_automatically_and_on_request(garments: torch.Tensor) -> None:
    pixels = garments[0]
    catalogue = encode_png(255 - pixels)  # a dark garment on white, like a shop photo
    torch.testing.assert_close(preprocess_image(catalogue), reference_input(pixels))
    torch.testing.assert_close(
        preprocess_image(catalogue, invert=False), reference_input(255 - pixels)
    )
    torch.testing.assert_close(
        preprocess_image(encode_png(pixels), invert=True), reference_input(255 - pixels)
    )


def test_letterbox_keeps_the_aspect_ratio_and_pads_with_black() -> None:
    wide = np.full((28, 56), 255, dtype=np.uint8)  # a white 2:1 rectangle on... itself
    wide[:, :2] = wide[:, -2:] = 0  # dark left/right border: not inverted
    wide[0] = wide[-1] = 0
    x = preprocess_image(encode_png(wide))
    pixels = (x[0, 0] * STD + MEAN) * 255
    assert pixels[:6].abs().max() < 1 and pixels[-6:].abs().max() < 1  # padding rows are black
    assert pixels[14, 10:18].min() > 200  # the content is in the middle band


def test_crop_and_stretch() -> None:
    grey = np.zeros((40, 60), dtype=np.uint8)
    grey[5:15, 20:50] = 100
    grey[0, 0] = 5  # JPEG-like noise below the threshold is not content
    assert upload.crop_to_content(grey).shape == (10, 30)
    assert upload.crop_to_content(np.zeros((5, 5), np.uint8)).shape == (5, 5)
    assert upload.stretch_contrast(grey).max() == 255
    assert upload.stretch_contrast(grey)[0, 0] == 13  # 5 × 255 / 100, rounded


def test_a_catalogue_photo_of_a_garment_comes_back_close(fashion_splits) -> None:
    """Dark-on-white, tinted, enlarged with margins, JPEG: preprocessing undoes most of it."""
    corrs = []
    for pixels in fashion_splits["test"].images[:20]:
        photo = catalogue_photo(pixels)
        assert Image.open(io.BytesIO(photo)).format == "JPEG"
        back = preprocess_image(photo).flatten()
        corrs.append(
            float(torch.corrcoef(torch.stack([back, reference_input(pixels).flatten()]))[0, 1])
        )
    assert np.mean(corrs) > 0.85 and min(corrs) > 0.6, corrs
    # without the inversion the garment is dark on black: anti-correlated with the training input
    back = preprocess_image(catalogue_photo(pixels), invert=False).flatten()
    assert torch.corrcoef(torch.stack([back, reference_input(pixels).flatten()]))[0, 1] < 0


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("RGB JPEG 97×61", lambda: encode(Image.new("RGB", (97, 61), (200, 30, 30)), "JPEG")),
        ("greyscale JPEG 1×1", lambda: encode(Image.new("L", (1, 1), 128), "JPEG")),
        ("CMYK JPEG", lambda: encode(Image.new("CMYK", (40, 30), (0, 50, 50, 0)), "JPEG")),
        ("progressive JPEG", lambda: encode(Image.new("RGB", (64, 64)), "JPEG", progressive=True)),
        ("RGBA PNG 3×500", lambda: encode(Image.new("RGBA", (3, 500), (10, 200, 10, 128)))),
        ("LA PNG", lambda: encode(Image.new("LA", (30, 30), (50, 0)))),
        ("palette PNG", lambda: encode(Image.new("RGB", (45, 33), (0, 0, 255)).convert("P"))),
        ("palette PNG with transparency", lambda: encode(Image.new("P", (20, 20)), transparency=0)),
        ("1-bit PNG", lambda: encode(Image.new("1", (50, 70), 1))),
        ("16-bit PNG", lambda: encode(Image.fromarray(np.full((31, 29), 40000, dtype=np.uint16)))),
        ("RGB PNG 500×3", lambda: encode(Image.new("RGB", (500, 3), (0, 0, 0)))),
    ],
)
def test_any_png_or_jpeg_gives_a_normalised_28x28_input(name: str, make) -> None:
    x = preprocess_image(make())
    assert x.shape == (1, 1, 28, 28), name
    assert torch.isfinite(x).all()
    pixels = (x * STD + MEAN) * 255
    assert pixels.min() > -0.5 and pixels.max() < 255.5, name


def test_16_bit_is_scaled_not_clipped() -> None:
    wide = np.zeros((28, 28), dtype=np.uint16)
    wide[10:18, 10:18] = 32768  # half of full scale → about 128, not clipped to 255
    x = preprocess_image(encode(Image.fromarray(wide)))
    assert float((x[0, 0, 14, 14] * STD + MEAN) * 255) == pytest.approx(128, abs=1)


def test_transparency_is_composited_onto_white_then_inverted() -> None:
    cutout = Image.new("RGBA", (28, 28), (0, 0, 0, 0))  # fully transparent background
    cutout.paste((0, 0, 0, 255), (8, 8, 20, 20))  # an opaque black square
    pixels = (preprocess_image(encode(cutout))[0, 0] * STD + MEAN) * 255
    assert pixels[0, 0] < 1 and pixels[14, 14] > 254  # inverted: white garment on black
    cutout.paste((255, 255, 255, 255), (8, 8, 20, 20))
    pixels = (preprocess_image(encode(cutout))[0, 0] * STD + MEAN) * 255
    assert pixels[14, 14] < 1 and pixels[0, 0] < 1  # white on white: nothing left to see


def forged_png(width: int, height: int, colour_type: int = 0) -> bytes:
    """A tiny PNG whose header claims ``width × height`` pixels (a decompression-bomb shape) of
    8-bit ``colour_type`` (0 greyscale, 2 RGB, 6 RGBA)."""
    data = bytearray(encode(Image.new("L", (1, 1))))
    ihdr = struct.pack(">IIBB", width, height, 8, colour_type) + bytes(data[26:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (b"", InvalidImage, "empty"),
        (b"hello, world", UnsupportedImage, "not a PNG or JPEG"),
        (encode(Image.new("RGB", (8, 8)), "GIF"), UnsupportedImage, "not a PNG or JPEG"),
        (encode(Image.new("RGB", (8, 8)), "BMP"), UnsupportedImage, "not a PNG or JPEG"),
        (encode(Image.new("RGB", (64, 64), (9, 9, 9)), "JPEG")[:300], InvalidImage, "truncated"),
        (forged_png(5000, 5000), ImageTooLarge, "allowed"),
        (forged_png(30000, 30000), ImageTooLarge, "decompression-bomb"),
    ],
)
def test_bad_bytes_raise_a_preprocess_error(data: bytes, error: type, words: str) -> None:
    with pytest.raises(error, match=words) as raised:
        preprocess_image(data)
    assert isinstance(raised.value, ValueError)  # one type for the API and the Streamlit app


def test_pillow_warns_above_its_limit_raises_above_twice_it_and_the_server_refuses_both() -> None:
    """What chapter 9 says: Pillow only warns between MAX_IMAGE_PIXELS and twice it (the server's
    own header check refuses the image), and raises above twice it, inside ``Image.open``
    (the server turns that error into the same 413)."""
    limit = Image.MAX_IMAGE_PIXELS
    assert limit > upload.DEFAULT_MAX_PIXELS  # the server's own limit is the stricter one
    warned = forged_png(*[int((1.5 * limit) ** 0.5)] * 2)  # between the limit and twice it
    with pytest.warns(Image.DecompressionBombWarning):
        Image.open(io.BytesIO(warned))
    with (
        pytest.warns(Image.DecompressionBombWarning),
        pytest.raises(ImageTooLarge, match="allowed"),
    ):
        preprocess_image(warned)
    raised = forged_png(*[int((2.5 * limit) ** 0.5)] * 2)  # above twice the limit
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(raised))
    with pytest.raises(ImageTooLarge, match="decompression-bomb guard"):
        preprocess_image(raised)


def test_preprocess_array_is_the_tensor_as_numpy(garments: torch.Tensor) -> None:
    photo = catalogue_photo(garments[3])
    x = upload.preprocess_array(photo)
    assert isinstance(x, np.ndarray) and x.dtype == np.float32 and x.shape == (1, 1, 28, 28)
    assert np.array_equal(x, preprocess_image(photo).numpy())


# --- EXIF orientation -----------------------------------------------------------------------------


def with_orientation(image: Image.Image, orientation: object, fmt: str = "JPEG") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillows_exif_transpose(orientation: int) -> None:
    pixels = (np.arange(5 * 7, dtype=np.uint8) * 7).reshape(5, 7)  # no symmetry
    image = Image.open(io.BytesIO(with_orientation(Image.fromarray(pixels), orientation, "PNG")))
    image.load()
    expected = np.asarray(ImageOps.exif_transpose(image))
    assert np.array_equal(upload.to_grey(image), expected)


def test_a_rotated_phone_jpeg_is_turned_upright() -> None:
    """A phone stores a portrait photo sideways with EXIF orientation 6 ('rotate 90° clockwise
    to view'): the model must see the upright garment, not the sideways one."""
    upright = Image.new("L", (60, 90), 255)  # a tall, dark 'trouser' on white, legs at the bottom
    upright.paste(30, (15, 5, 45, 50))
    upright.paste(30, (15, 50, 27, 85))
    upright.paste(30, (33, 50, 45, 85))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the camera wrote: sideways
    expected = preprocess_image(encode(upright, "JPEG", quality=95))
    turned = preprocess_image(with_orientation(stored, 6))
    ignored = preprocess_image(encode(stored, "JPEG", quality=95))
    assert float((turned - expected).abs().max()) < 0.5  # a few grey levels of JPEG noise
    assert float((ignored - expected).abs().max()) > 2  # without the tag it really is different


@pytest.mark.parametrize(
    "exif",
    [
        b"Exif\x00\x00" + bytes(range(40)),  # garbage after the header
        b"Exif\x00\x00MM\x00\x2a\x00\x00\xff\xff\xff\xff",  # an IFD offset far past the end
        b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00\x63\x00",
        b"Exif",  # cut short
        # a fuzzed camera EXIF (orientation 6 and a mangled tag): ImageOps.exif_transpose raises
        # struct.error on it, which the server used to answer with a 500
        b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x03\x01B\x00\x02\x00\x00\x00\x07\x00\x00\x002"
        b"\x01\x10\x00\x02\x00\x00\x00\x06\x00\x00\x00:\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06"
        b"\x00\x00\x00\x00\x00\x00Camera\x00\x00Model\x00",
    ],
    ids=["garbage", "bad-offset", "orientation-99", "cut", "breaks-exif-transpose"],
)
@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's warning, in the server's log
def test_malformed_exif_is_never_a_5xx(client, exif: bytes) -> None:
    photo = encode(Image.new("RGB", (40, 30), (200, 180, 170)), "JPEG", exif=exif)
    response = post(client, photo)
    assert response.status_code == 200, response.get_data(as_text=True)


@pytest.mark.parametrize("orientation", [0, 9, 65535])
def test_out_of_range_orientation_tags_are_ignored(orientation: object) -> None:
    photo = Image.new("RGB", (40, 30), (200, 180, 170))
    data = with_orientation(photo, orientation)
    assert np.array_equal(
        upload.preprocess_array(data), upload.preprocess_array(encode(photo, "JPEG", quality=95))
    )


# --- memory ---------------------------------------------------------------------------------------


def test_the_decode_cost_counts_bytes_per_pixel() -> None:
    assert upload.decode_cost("L", 100, 10) == 1000 * (1 + 4)
    assert upload.decode_cost("I;16", 100, 10) == 1000 * (2 + 4)
    assert upload.decode_cost("RGB", 100, 10) == 1000 * (4 + 4)  # Pillow stores RGB in 4 bytes
    assert upload.decode_cost("RGBA", 100, 10) == 1000 * (4 + 8)


def test_an_image_too_costly_to_decode_is_413_before_decoding(model_path: Path) -> None:
    """4,000 × 4,000 RGBA passes the pixel limit (16 megapixels) but needs ~190 MB to decode."""
    header = forged_png(4000, 4000, colour_type=6)  # 8-bit RGBA
    with pytest.raises(ImageTooLarge, match="bytes of memory"):
        upload.open_image(header)
    assert_json_error(post(create_app(model_path).test_client(), header), 413, "per upload")


def test_a_16_bit_4096_png_is_handled_within_its_decode_cost() -> None:
    """In a fresh process: the peak memory of preprocessing a 4096² 16-bit PNG (37 kB on disk)
    stays within the decode cost the budget reserves for it (the float64 version took ~1 GB)."""
    result = run_python(
        """
        import json
        from serving import upload
        from course_utils.bad_files import sixteen_bit_png

        def status():
            fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
            return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}

        png = sixteen_bit_png(4096)
        upload.preprocess_array(sixteen_bit_png(64))  # import and warm up the code paths
        before = status()
        x = upload.preprocess_array(png)
        after = status()
        print(json.dumps({"rise": after["VmHWM"] - max(before["VmRSS"], 0), "shape": x.shape,
                          "before_peak": before["VmHWM"], "bytes": len(png),
                          "cost": upload.decode_cost("I;16", 4096, 4096)}))
        """
    )
    assert result["shape"] == [1, 1, 28, 28] and result["bytes"] < 100_000
    assert result["rise"] <= result["cost"], result  # ≈ 100 MB reserved


def test_the_memory_budget_makes_decodes_take_turns() -> None:
    """The second reservation waits for the first to end (events, not sleeps: a slow machine
    cannot make it fail); one that cannot get its share in time is refused with a 503's words."""
    budget = upload.MemoryBudget(100, timeout=60)
    trying, got = threading.Event(), threading.Event()

    def second() -> None:
        trying.set()
        with budget.reserve(50):
            got.set()

    with budget.reserve(80):
        waiter = threading.Thread(target=second)
        waiter.start()
        assert trying.wait(10)
        assert not got.wait(0.2), "the second reservation did not wait for the first"
    assert got.wait(10), "the second reservation never got its share"
    waiter.join(10)
    busy = upload.MemoryBudget(100, timeout=0.05)
    with (
        busy.reserve(60),
        pytest.raises(upload.ServerBusy, match="retry later"),
        busy.reserve(60),
    ):
        pass
    with budget.reserve(10**9):  # more than the whole budget: takes all of it, not forever
        pass


def test_a_busy_server_answers_503(model_path: Path) -> None:
    app = create_app(model_path)
    budget = app.extensions["course_memory_budget"]
    budget.timeout = 0.2
    with budget.reserve(budget.total_bytes):  # other uploads hold all of it
        response = post(app.test_client(), encode_png(np.zeros((28, 28), np.uint8)))
    assert_json_error(response, 503, "retry later")


# --- the model file ------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".onnx", ".pt2", ".pt"])
def test_every_kind_of_model_file_gives_the_models_logits(
    model_dir: Path, model: torch.nn.Module, suffix: str, garments: torch.Tensor
) -> None:
    x = torch.cat([reference_input(p) for p in garments])
    with torch.inference_mode():
        expected = model(x).numpy()
    logits = inference.load_model(model_dir / f"untrained{suffix}")(x.numpy())
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)
    assert (logits.argmax(1) == expected.argmax(1)).all()


@pytest.mark.parametrize("suffix", [".onnx", ".pt2"])
@pytest.mark.slow
def test_serving_an_export_imports_neither_the_model_class_nor_torch_for_onnx(
    model_dir: Path, suffix: str
) -> None:
    """The promise of chapter 8: the server needs the file, not the Python class (and, for
    ONNX, not PyTorch at all). Checked in a fresh interpreter after a real request."""
    result = run_python(
        f"""
        import io, json, sys
        from serving.serve import create_app
        from serving.upload import encode_png
        import numpy as np

        app = create_app({str(model_dir / f"untrained{suffix}")!r})
        png = encode_png(np.zeros((28, 28), np.uint8))
        response = app.test_client().post("/predict", data={{"file": (io.BytesIO(png), "a.png")}})
        loaded = [m for m in ("torch", "course_utils.models", "course_utils.data",
                              "course_utils.train") if m in sys.modules]
        print(json.dumps({{"status": response.status_code, "loaded": loaded}}))
        """
    )
    assert result["status"] == 200
    if suffix == ".onnx":
        assert result["loaded"] == []
    else:
        assert result["loaded"] == ["torch"]


def start_server(*args: str, timeout: float = 60) -> tuple[subprocess.Popen, str]:
    """``python -m serving.serve serve ARGS --port 0``; (the process, its first line)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.serve", "serve", *args, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return proc, line[0] if line else ""


def stop(proc: subprocess.Popen) -> str:
    """Interrupt the server; its stderr."""
    proc.send_signal(2)
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        ("no sidecar", "has no untrained.onnx.sha256 beside it"),
        ("one byte changed", "does not match its recorded SHA-256"),
        ("missing", "does not exist"),
        ("binary sidecar", "is malformed"),  # was a UnicodeDecodeError traceback, exit 1
    ],
)
def test_the_server_refuses_to_start_on_an_unverifiable_file(
    model_path: Path, tmp_path: Path, damage: str, words: str
) -> None:
    copy = tmp_path / model_path.name
    if damage != "missing":
        blob = bytearray(model_path.read_bytes())
        copy.write_bytes(blob)
    if damage == "one byte changed":
        (tmp_path / f"{copy.name}.sha256").write_text(
            (model_path.parent / f"{model_path.name}.sha256").read_text()
        )
        blob[len(blob) // 2] ^= 0xFF
        copy.write_bytes(blob)
    if damage == "binary sidecar":
        (tmp_path / f"{copy.name}.sha256").write_bytes(b"\xff\xfe\x00\x9c" * 20)
    with pytest.raises(ModelFileError, match=words):
        create_app(copy)
    done = subprocess.run(
        [sys.executable, "-m", "serving.serve", "serve", "--model", str(copy), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        check=False,
    )
    assert done.returncode == 2 and "listening" not in done.stdout
    assert words in done.stderr and "Traceback" not in done.stderr


def test_a_checkpoint_without_its_sidecar_is_not_served(model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "untrained.pt"
    copy.write_bytes((model_dir / "untrained.pt").read_bytes())  # without untrained.pt.sha256
    with pytest.raises(ModelFileError, match="has no untrained.pt.sha256"):
        create_app(copy)


def test_a_port_in_use_is_a_message_and_exit_2(model_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = subprocess.run(
            [sys.executable, "-m", "serving.serve", "serve", "--model", str(model_path)]
            + ["--port", port],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO_ROOT,
            check=False,
        )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "--port" in done.stderr


def test_an_unknown_kind_of_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"weights")
    with pytest.raises(ModelFileError, match=".onnx, .pt2, .pt"):
        create_app(tmp_path / "model.bin")


def test_the_host_defaults_to_loopback_and_exposing_it_warns(model_path: Path) -> None:
    proc, line = start_server("--model", str(model_path))
    err = stop(proc)
    assert line.startswith("listening on http://127.0.0.1:"), (line, err)
    assert "warning" not in err
    proc, line = start_server("--model", str(model_path), "--host", "0.0.0.0")
    err = stop(proc)
    assert line.startswith("listening on http://0.0.0.0:"), (line, err)
    assert "warning: listening on 0.0.0.0" in err and "no authentication" in err


def test_the_command_line_help_warns_about_exposing_the_host() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "serving.serve", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        check=True,
    )
    text = " ".join(done.stdout.split())
    assert "default 127.0.0.1: this machine only" in text
    assert "WARNING: 0.0.0.0 exposes the API to every network" in text


# --- the API: good requests -----------------------------------------------------------------------


def test_health(client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "ok",
        "model": "untrained.onnx",
        "classes": list(CLASSES),
    }


def test_predict_matches_the_model(client, model, garments: torch.Tensor) -> None:
    for pixels in garments[:6]:
        response = post(client, encode_png(pixels))
        assert response.status_code == 200
        body = response.get_json()
        with torch.inference_mode():
            logits = model(reference_input(pixels))
        expected = int(logits.argmax(1))
        assert body["class_index"] == expected and body["label"] == CLASSES[expected]
        assert list(body) == ["label", "class_index", "probabilities"]
        probs = body["probabilities"]
        assert len(probs) == 3 and probs[0]["class_index"] == expected
        assert probs[0]["probability"] == pytest.approx(
            float(torch.softmax(logits, 1).max()), abs=1e-5
        )
        assert [p["probability"] for p in probs] == sorted(
            (p["probability"] for p in probs), reverse=True
        )


def test_response_from_logits_agrees_with_predict_response(model, garments) -> None:
    x = reference_input(garments[1])
    with torch.inference_mode():
        logits = model(x)[0].numpy()
    ours = inference.response_from_logits(logits, 10)
    theirs = inference.predict_response(model, x, 10)
    assert ours["class_index"] == theirs["class_index"]
    for a, b in zip(ours["probabilities"], theirs["probabilities"], strict=True):
        assert a["class_index"] == b["class_index"]
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-6)


def test_top_k_10_is_a_distribution(client, garments: torch.Tensor) -> None:
    body = post(client, encode_png(garments[0]), query="?top_k=10").get_json()
    assert sorted(p["class_index"] for p in body["probabilities"]) == list(range(10))
    assert sum(p["probability"] for p in body["probabilities"]) == pytest.approx(1, abs=1e-5)


def test_predict_accepts_jpeg_of_odd_size(client) -> None:
    photo = Image.new("RGB", (333, 201), "white")
    photo.paste((40, 40, 60), (120, 30, 220, 180))  # a dark garment on a white background
    response = post(client, encode(photo, "JPEG", quality=85))
    assert response.status_code == 200
    assert response.get_json()["label"] in CLASSES


def test_model_is_loaded_once_and_run_in_inference_mode(model_dir: Path, monkeypatch) -> None:
    calls = []
    real = serve.load_model
    monkeypatch.setattr(serve, "load_model", lambda *a, **k: calls.append(a) or real(*a, **k))
    app = create_app(model_dir / "untrained.pt")  # a .pt2's mode is fixed when exported
    seen: list[tuple[bool, bool]] = []
    app.extensions["course_model"].module.register_forward_pre_hook(
        lambda m, args: seen.append((torch.is_inference_mode_enabled(), m.training))
    )
    test_client = app.test_client()
    for _ in range(3):
        assert post(test_client, encode_png(np.zeros((28, 28), np.uint8))).status_code == 200
    assert len(calls) == 1
    assert seen == [(True, False)] * 3


# --- the API: every bad request is a 4xx JSON error -----------------------------------------------


def test_no_file_field(client) -> None:
    assert_json_error(post(client, None), 400, "field named 'file'")
    assert_json_error(post(client, b"\x89PNG", field="image"), 400, "fields received: 'image'")


def test_the_field_names_echoed_are_few_and_short(client) -> None:
    form = {f"{'x' * 500}{i}": "" for i in range(10)}
    response = client.post("/predict", data=form, content_type="multipart/form-data")
    assert_json_error(response, 400, "fields received")
    assert len(response.get_data()) < 400


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("&".join(["a="] * 200_000), "application/x-www-form-urlencoded"),  # 200k empty fields
        ("secret=" + "s" * 5000, "application/x-www-form-urlencoded"),
        (b"\x89PNG" + bytes(100), "image/png"),
        ('{"file": "secret"}', "application/json"),
        ("secret text", "text/plain"),
        ("secret", None),
    ],
    ids=["200k-fields", "one-long-field", "raw-png", "json", "text", "no-content-type"],
)
def test_a_body_that_is_not_multipart_is_415_without_an_echo(client, body, content_type) -> None:
    response = client.post("/predict", data=body, content_type=content_type)
    assert_json_error(response, 415, "multipart/form-data")
    assert len(response.get_data()) < 400
    assert b"secret" not in response.get_data()


def test_too_many_parts_is_413_and_says_so(client) -> None:
    form = {f"f{i}": "" for i in range(50)}  # a small body: 50 empty fields
    response = client.post("/predict", data=form, content_type="multipart/form-data")
    assert_json_error(response, 413, f"more than {form_limits.MAX_FORM_PARTS} parts")
    assert "bytes allowed" not in response.get_json()["message"]


def test_the_part_limit_is_exact(client) -> None:
    png = encode_png(np.zeros((28, 28), np.uint8))
    extra = {f"f{i}": "" for i in range(form_limits.MAX_FORM_PARTS - 1)}
    form = {**extra, "file": (io.BytesIO(png), "a.png")}  # exactly MAX_FORM_PARTS parts
    assert client.post("/predict", data=form).status_code == 200
    form = {**extra, "g": "", "file": (io.BytesIO(png), "a.png")}  # one more
    assert_json_error(client.post("/predict", data=form), 413, "parts")


def test_an_oversized_text_field_is_413_and_says_so(client) -> None:
    png = encode_png(np.zeros((28, 28), np.uint8))
    form = {"note": "x" * form_limits.MAX_FIELD_BYTES, "file": (io.BytesIO(png), "a.png")}
    assert client.post("/predict", data=form).status_code == 200  # at the limit: kept
    form = {"note": "x" * (form_limits.MAX_FIELD_BYTES + 1), "file": (io.BytesIO(png), "a.png")}
    response = client.post("/predict", data=form, content_type="multipart/form-data")
    limit = f"{form_limits.MAX_FIELD_BYTES:,} bytes"
    assert_json_error(response, 413, f"a text field of the form is larger than the {limit}")


def multipart(*parts: tuple[bytes, bytes], boundary: bytes = b"b0undary") -> tuple[bytes, str]:
    """A raw multipart body from (Content-Disposition value, data) pairs, and its Content-Type."""
    body = b"".join(
        b"--%s\r\nContent-Disposition: %s\r\n\r\n%s\r\n" % (boundary, disposition, data)
        for disposition, data in parts
    )
    return body + b"--%s--\r\n" % boundary, f"multipart/form-data; boundary={boundary.decode()}"


@pytest.mark.parametrize(
    ("disposition", "status", "words"),
    [
        (b'form-data; filename="a.png"', 400, "has no name"),  # was a 500 (TypeError)
        (b'form-data; name="file"; filename="caf\xe9.png"', 400, "not UTF-8"),  # was dropped
        (b'form-data; name="file"; filename="caf\xc3\xa9.png"', 200, ""),  # UTF-8: fine
    ],
    ids=["no-name", "latin-1-filename", "utf-8-filename"],
)
def test_odd_part_headers_get_an_answer_that_says_why(
    client, disposition: bytes, status: int, words: str
) -> None:
    body, kind = multipart((disposition, encode_png(np.zeros((28, 28), np.uint8))))
    response = client.post("/predict", data=body, content_type=kind)
    if status == 200:
        assert response.status_code == 200, response.get_data(as_text=True)
    else:
        assert_json_error(response, status, words)


def test_a_truncated_form_is_400_and_says_so(client) -> None:
    body, kind = multipart((b'form-data; name="file"; filename="a.png"', b"\x89PNG" * 100))
    response = client.post("/predict", data=body[:-40], content_type=kind)
    assert_json_error(response, 400, "malformed or truncated")


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"", 400, "empty"),
        (b"%PDF-1.7 not an image", 415, "not a PNG or JPEG"),
        (encode(Image.new("RGB", (8, 8)), "GIF"), 415, "not a PNG or JPEG"),
        (encode(Image.new("L", (64, 64), 7))[:-30], 400, "truncated"),
        (encode(Image.new("RGB", (64, 64), (9, 9, 9)), "JPEG")[:300], 400, "truncated"),
        (b"\x89PNG\r\n\x1a\n" + bytes(40), 400, "corrupt"),
        (forged_png(5000, 5000), 413, "allowed"),
        (forged_png(30000, 30000), 413, "decompression-bomb"),
    ],
    ids=["empty", "pdf", "gif", "truncated-png", "truncated-jpeg", "bad-header", "big", "bomb"],
)
def test_bad_uploads(client, data: bytes, status: int, words: str) -> None:
    assert_json_error(post(client, data), status, words)


def test_a_real_decompression_bomb(model_path: Path) -> None:
    """A 5,000 × 5,000 black PNG is only ~25 kB but 25 megapixels: refused before decoding."""
    bomb = encode(Image.new("1", (5000, 5000)), optimize=True)
    assert len(bomb) < 100_000
    client = create_app(model_path, max_pixels=20_000_000).test_client()
    assert_json_error(post(client, bomb), 413, "20,000,000 allowed")


def test_upload_over_the_limit_is_413(model_path: Path) -> None:
    client = create_app(model_path, max_bytes=10_000).test_client()
    big = encode(Image.effect_noise((120, 120), 64).convert("L"))  # noise: barely compresses
    assert len(big) > 10_000
    assert_json_error(post(client, big), 413, "10,000 bytes allowed")


@pytest.mark.parametrize(
    ("method", "url"),
    [("GET", "/predict"), ("PUT", "/predict"), ("DELETE", "/predict"), ("POST", "/health")],
)
def test_wrong_method_is_405_json(client, method: str, url: str) -> None:
    response = client.open(url, method=method)
    assert_json_error(response, 405, "not allowed")
    assert response.headers["Allow"]


def test_unknown_url_is_404_json(client) -> None:
    assert_json_error(client.get("/predict/now"), 404, "not found")


@pytest.mark.parametrize(
    "k",
    ["0", "11", "-1", "three", "", "²", "١", "٣", "9" * 5000, "0" * 4999 + "3", "%203", "3%0A"],
    ids=[
        "0",
        "11",
        "-1",
        "three",
        "empty",
        "superscript-2",
        "arabic-1",
        "arabic-3",
        "5000-digits",
        "5000-digits-3",
        "space",
        "newline",
    ],
)
def test_bad_top_k(client, k: str, garments: torch.Tensor) -> None:
    response = post(client, encode_png(garments[0]), query=f"?top_k={k}")
    assert_json_error(response, 400, "top_k")
    assert len(response.get_data()) < 300  # a 5,000-digit value is not echoed back


def test_a_bug_is_a_500_json_without_traceback(model_path: Path, monkeypatch) -> None:
    def broken(*args: object, **kw: object) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(serve, "preprocess_array", broken)
    response = post(create_app(model_path).test_client(), b"x")
    assert response.status_code == 500 and response.is_json
    assert "secret" not in response.get_data(as_text=True)


def test_a_single_huge_16_bit_png_is_answered(client) -> None:
    """4096² 16-bit: within the limits, answered (200 or a 4xx), never a 5xx."""
    response = post(client, sixteen_bit_png(4096))
    assert response.status_code < 500 and response.is_json


# --- fuzz: no body makes the server fail ----------------------------------------------------------

SEEDS = [
    encode(Image.new("L", (28, 28), 30)),
    encode(Image.new("RGB", (40, 30), (200, 10, 10)), "JPEG"),
    encode(Image.new("RGBA", (17, 9), (1, 2, 3, 4))),
]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """Flip, drop, insert or truncate bytes of a valid image: inputs that reach the decoders."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(4)
        pos = rng.randrange(len(out)) if out else 0
        if op == 0 and out:
            out[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and out:
            del out[pos : pos + rng.randint(1, 16)]
        elif op == 2:
            out[pos:pos] = rng.randbytes(rng.randint(1, 16))
        else:
            out = out[: rng.randrange(len(out) + 1)]
    return bytes(out)


@settings(
    max_examples=500,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=st.one_of(
        st.binary(max_size=512),
        st.builds(mutate, st.sampled_from(SEEDS), st.randoms(use_true_random=False)),
    )
)
def test_fuzz_no_body_gives_a_5xx(client, body: bytes) -> None:
    response = post(client, body)
    assert response.status_code < 500, response.get_data(as_text=True)
    assert response.is_json
    assert set(response.get_json()) in (
        {"error", "message"},
        {"label", "class_index", "probabilities"},
    )


# --- a real server --------------------------------------------------------------------------------


def test_waitress_refuses_a_body_over_the_apps_limit_before_reading_it(model_path: Path) -> None:
    """The server's body limit is the app's: a request that declares a body at the limit is
    refused from its headers alone, while the client has not sent a byte of the body (both
    waitress and werkzeug, behind it, refuse a body of max_bytes or more)."""
    app = create_app(model_path, max_bytes=50_000)
    server = serve.ServerThread(app).start()
    assert server.server.adj.max_request_body_size == app.config["MAX_CONTENT_LENGTH"]
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
            conn.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                b"boundary=b\r\nContent-Length: 50000\r\n\r\n"
            )
            answer = conn.recv(4096)  # no body sent: a server waiting for it would time out
        assert answer.startswith(b"HTTP/1.1 413"), answer
        below = requests.post(
            f"{server.url}/predict",
            data=b"x" * 49_999,
            headers={"Content-Type": "multipart/form-data; boundary=b"},
            timeout=10,
        )
        assert below.status_code == 400 and "malformed" in below.json()["message"]  # Flask's
    finally:
        server.stop()


def test_stop_lets_a_request_in_flight_finish_before_closing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``ServerThread.stop`` while a worker is inside the app: the worker finishes and its client
    gets the answer, and waitress logs no error. (Closing the connections first made the worker
    find the loop's trigger closed when it finished: "Exception when servicing … OSError: [Errno
    9] Bad file descriptor" under the appendix's latency cell.) Events order the steps."""
    from waitress import wasyncore

    entered, release, stopping = threading.Event(), threading.Event(), threading.Event()

    slow_app = flask.Flask("slow")
    slow_app.config["MAX_CONTENT_LENGTH"] = 1024  # make_server takes its body limit from here

    @slow_app.get("/")
    def slow() -> str:
        entered.set()
        release.wait(10)
        return "done"

    server = serve.ServerThread(slow_app).start()
    close_all = wasyncore.close_all
    monkeypatch.setattr(
        wasyncore, "close_all", lambda *a, **k: (stopping.set(), close_all(*a, **k))
    )
    shutdown = server.server.task_dispatcher.shutdown
    monkeypatch.setattr(
        server.server.task_dispatcher,
        "shutdown",
        lambda *a, **k: (stopping.set(), shutdown(*a, **k)),
    )
    answers: list[object] = []

    def client() -> None:
        try:
            answers.append(requests.get(server.url, timeout=10).status_code)
        except requests.RequestException as err:
            answers.append(err)

    asking = threading.Thread(target=client)
    asking.start()
    assert entered.wait(10), "the request never reached the app"
    stopper = threading.Thread(target=server.stop)
    with caplog.at_level(logging.ERROR, logger="waitress"):
        stopper.start()
        assert stopping.wait(10), "stop() neither drained the workers nor closed the connections"
        release.set()  # the worker finishes only now, after stop() has begun
        stopper.join(15)
        asking.join(15)
    assert not stopper.is_alive() and not server.thread.is_alive()
    assert answers == [200], answers
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_real_server_under_concurrent_load(model_path: Path, model, garments: torch.Tensor) -> None:
    bodies = [encode_png(p) for p in garments]
    with torch.inference_mode():
        expected = model(torch.cat([reference_input(p) for p in garments])).argmax(1).tolist()
    local = threading.local()

    def one(i: int) -> tuple[int, int]:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        response = local.session.post(
            f"{url}/predict", files={"file": ("g.png", bodies[i % 16], "image/png")}, timeout=30
        )
        return response.status_code, response.json().get("class_index", -1)

    with serve_in_background(model_path, threads=8) as url:
        assert url.startswith("http://127.0.0.1:")
        assert requests.get(f"{url}/health", timeout=10).json()["status"] == "ok"
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(200)))
        bad = requests.post(f"{url}/predict", files={"file": ("x.png", b"junk")}, timeout=10)
        assert bad.status_code == 415 and "PNG or JPEG" in bad.json()["message"]
        too_big = bytes(serve.DEFAULT_MAX_BYTES + 1)
        huge = requests.post(f"{url}/predict", files={"file": too_big}, timeout=10)
        assert huge.status_code == 413  # waitress's own (plain-text) answer
        wrong = requests.get(f"{url}/predict", timeout=10)
        assert wrong.status_code == 405 and wrong.json()["error"] == "method not allowed"
    assert results == [(200, expected[i % 16]) for i in range(200)]
    with pytest.raises(requests.ConnectionError):  # the port is closed after a clean shutdown
        requests.get(f"{url}/health", timeout=2)


def test_bench_command_reports_latency(model_path: Path) -> None:
    result = bench(model_path, n_requests=60, concurrency=4, warmup=5, deadline_s=60)
    assert result.errors == 0 and result.wrong == 0
    assert len(result.latencies_ms) == 60
    assert 0 < result.p50_ms <= result.p99_ms <= result.max_ms
    assert result.throughput > 0 and "p99" in result.summary()
    json.dumps({k: v for k, v in vars(result).items()})  # plain numbers


@pytest.mark.slow
def test_bench_models_compares_the_export_and_the_checkpoint(model_dir: Path) -> None:
    paths = [model_dir / "untrained.onnx", model_dir / "untrained.pt"]
    results = loadtest.bench_models(paths, n_requests=30, concurrency=2, warmup=3)
    assert list(results) == ["untrained.onnx", "untrained.pt"]
    assert all(
        r.errors == 0 and r.wrong == 0 and len(r.latencies_ms) == 30 for r in results.values()
    )


def test_the_load_test_command_line_prints_one_json_line_per_model(
    model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m serving.loadtest bench`` (the command moved out of serve, which no
    longer imports the benchmark): exit status 0 and a JSON line with the model's numbers."""
    args = ["bench", "--model", str(model_path), "--requests", "20", "--concurrency", "2"]
    assert loadtest.main([*args, "--json"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    fields = json.loads(line)
    assert fields["model"] == model_path.name and fields["requests"] == 20
    assert fields["errors"] == 0 and fields["wrong"] == 0
    with pytest.raises(SystemExit):
        serve.main(["bench", "--model", str(model_path)])  # not a serve command any more


def test_bench_sweep_measures_each_concurrency_against_one_server(
    model_path: Path, monkeypatch
) -> None:
    started = []
    real = loadtest._server_process
    monkeypatch.setattr(loadtest, "_server_process", lambda *a: started.append(a) or real(*a))
    results = bench_sweep(model_path, n_requests=30, concurrencies=[1, 3], warmup=3)
    assert len(started) == 1
    assert [r.concurrency for r in results] == [1, 3]
    assert all(r.errors == 0 and r.wrong == 0 and len(r.latencies_ms) == 30 for r in results)


def test_bench_memory_reports_the_servers_peak(model_path: Path) -> None:
    report = loadtest.bench_memory(model_path, clients=2, n_requests=4, side=1024)
    assert report.statuses == {200: 4} and report.server_errors == 0
    assert 0 < report.rss_start_mb <= report.peak_rss_mb
    assert "peak" in report.summary()


def test_bench_refuses_unbounded_runs(model_path: Path) -> None:
    with pytest.raises(ValueError, match="concurrency"):
        bench(model_path, n_requests=10, concurrency=1000)
    with pytest.raises(ValueError, match="concurrency"):
        bench_sweep(model_path, n_requests=10, concurrencies=[2, 0])
    with pytest.raises(ValueError, match="concurrency"):
        bench_sweep(model_path, n_requests=10, concurrencies=[])


# --- real uploads of every size, slow clients, costly images ------------------------------------

UPLOAD_MIB = (0.1, 1, 4, 7.9)


def noise_image(fmt: str, mib: float, seed: int = 0) -> bytes:
    """A PNG or JPEG of RGB noise, just under ``mib`` MiB: incompressible, so its bytes hold a CR or
    LF near the end of many of the parser's reads (photo-like; a flat test image has none)."""
    rng = np.random.default_rng(seed)
    per_pixel = 3.0 if fmt == "PNG" else 1.9  # noise: PNG stores it raw, JPEG q=95 about 1.9 B
    side = int((mib * 2**20 / per_pixel) ** 0.5)
    while True:
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        data = encode(Image.fromarray(pixels), fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        if len(data) <= mib * 2**20:
            return data
        side = int(side * 0.98 * (mib * 2**20 / len(data)) ** 0.5)


@pytest.fixture(scope="module")
def noise_uploads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("uploads")
    files = {}
    for fmt, suffix in (("PNG", "png"), ("JPEG", "jpg")):
        for mib in UPLOAD_MIB:
            files[f"{mib}MiB.{suffix}"] = folder / f"noise-{mib}MiB.{suffix}"
            files[f"{mib}MiB.{suffix}"].write_bytes(noise_image(fmt, mib))
    return files


def chunked_multipart(data: bytes, filename: str, piece: int = 50_000):
    """A multipart body as a generator: ``requests`` sends it with chunked transfer encoding."""
    body, content_type = loadtest._multipart(data)
    body = body.replace(b'filename="image.png"', f'filename="{filename}"'.encode())
    return (body[i : i + piece] for i in range(0, len(body), piece)), content_type


def test_real_uploads_of_every_size_are_answered(model_path: Path, noise_uploads) -> None:
    """Incompressible PNGs and JPEGs of 0.1 to 7.9 MiB, sent by ``requests`` and ``curl -F``, with
    and without chunked encoding: every one is predicted (a 64 KiB form-memory limit, werkzeug's
    read size, refused most of them with 'a text field … is larger')."""
    answers = {}
    with serve_in_background(model_path) as url:
        for name, path in noise_uploads.items():
            data = path.read_bytes()
            assert len(data) < serve.DEFAULT_MAX_BYTES - 1000
            sent = requests.post(f"{url}/predict", files={"file": (path.name, data)}, timeout=60)
            answers[f"requests {name}"] = sent
            chunks, kind = chunked_multipart(data, path.name)
            sent = requests.post(
                f"{url}/predict", data=chunks, headers={"Content-Type": kind}, timeout=60
            )
            answers[f"requests chunked {name}"] = sent
            for chunked in ([], ["-H", "Transfer-Encoding: chunked"]):
                done = subprocess.run(
                    ["curl", "-sS", "-F", f"file=@{path}", *chunked, f"{url}/predict"],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=True,
                )
                answers[f"curl {'chunked ' * bool(chunked)}{name}"] = done.stdout
    failed = {}
    for how, answer in answers.items():
        body = answer if isinstance(answer, str) else answer.text
        refused = isinstance(answer, requests.Response) and answer.status_code != 200
        if refused or '"probabilities"' not in body:
            failed[how] = body[:120]
    assert not failed, f"{len(failed)} of {len(answers)} uploads failed: {failed}"


def scan_bomb(side: int = 4096, repeats: int = 1000) -> bytes:
    """A flat progressive JPEG with one 33-byte scan repeated ``repeats`` times: about 100 kB,
    and each scan decodes the whole image again (14 s for this one without a limit)."""
    data = encode(Image.new("L", (side, side), 128), "JPEG", progressive=True, quality=50)
    starts = [i for i in range(len(data) - 1) if data[i : i + 2] == b"\xff\xda"]
    end = data.rindex(b"\xff\xd9")
    scans = [data[a:b] for a, b in zip(starts, [*starts[1:], end], strict=True)]
    return data[:end] + min(scans, key=len) * repeats + data[end:]


def test_a_jpeg_with_too_many_scans_is_refused_before_decoding(client) -> None:
    bomb = scan_bomb()
    assert upload.jpeg_scans(bomb) > 1000 and len(bomb) < 150_000
    start = time.perf_counter()
    assert_json_error(post(client, bomb), 413, f"more than the {upload.MAX_JPEG_SCANS} allowed")
    assert time.perf_counter() - start < 2
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), np.uint8))
    ordinary = encode(rgb, "JPEG", progressive=True)  # 10 scans, as encoders write them
    assert upload.jpeg_scans(ordinary) == 10
    assert post(client, ordinary).status_code == 200


def test_health_answers_while_clients_hang_and_send_costly_images(model_path: Path) -> None:
    """110 connections that send half a request and wait, and two scan bombs at once, leave
    /health answering (waitress's default connection limit of 100 let the idle sockets lock
    every other client out for its 120 s timeout)."""
    with serve_in_background(model_path) as url:
        port = int(url.rsplit(":", 1)[1])
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(110)]
        try:
            for conn in idle:
                conn.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")  # and never the rest
            bombs = [
                threading.Thread(
                    target=requests.post,
                    args=(f"{url}/predict",),
                    kwargs={"files": {"file": ("a.jpg", scan_bomb())}, "timeout": 60},
                )
                for _ in range(2)
            ]
            for thread in bombs:
                thread.start()
            start = time.perf_counter()
            assert requests.get(f"{url}/health", timeout=5).status_code == 200
            assert time.perf_counter() - start < 2
            for thread in bombs:
                thread.join(60)
        finally:
            for conn in idle:
                conn.close()


@pytest.mark.slow
def test_idle_connections_are_closed_after_the_idle_timeout(model_path: Path) -> None:
    """Past the connection limit, new clients wait until idle connections time out."""
    app = create_app(model_path)
    server = serve.ServerThread(app, connection_limit=4, channel_timeout=1, cleanup_interval=1)
    server.start()
    try:
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(6)]
        start = time.perf_counter()
        assert requests.get(f"{server.url}/health", timeout=10).status_code == 200
        assert time.perf_counter() - start < 5
        assert all(conn.recv(1) == b"" for conn in idle[:4])  # closed by the server
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n", 400),
        (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 9000000\r\n\r\n", 413),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 300_000 + b"\r\n\r\n", 431),
        (b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    ],
    ids=["bad-header", "body-too-large", "headers-too-large", "transfer-encoding"],
)
def test_the_answers_that_come_from_waitress_are_plain_text(
    model_path: Path, request_head: bytes, status: int
) -> None:
    """The four answers the README and make_server's docstring list as waitress's own."""
    with serve_in_background(model_path) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            answer = b""
            with suppress(ConnectionResetError, BrokenPipeError):  # waitress may close first
                conn.sendall(request_head)
                while chunk := conn.recv(65536):
                    answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == str(status).encode(), head  # HTTP/1.0 for the 431
    assert b"Content-Type: text/plain" in head and b"generated by waitress" in body
