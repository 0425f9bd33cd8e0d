"""The serving API: preprocessing, good and bad uploads, a fuzz test, a real waitress server."""

from __future__ import annotations

import io
import json
import random
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from course_utils import loadtest, serve
from course_utils.data import CLASSES, MEAN, STD
from course_utils.models import FashionCNN
from course_utils.serve import (
    ImageTooLarge,
    InvalidImage,
    UnsupportedImage,
    bench,
    bench_sweep,
    create_app,
    encode_png,
    preprocess_image,
    serve_in_background,
)
from course_utils.train import CheckpointError, save_checkpoint


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained FashionCNN checkpoint: the API must not care how good the weights are."""
    torch.manual_seed(0)
    return save_checkpoint(FashionCNN(), tmp_path_factory.mktemp("model") / "untrained.pt")


@pytest.fixture(scope="module")
def model(model_path: Path) -> torch.nn.Module:
    from course_utils.train import load_checkpoint

    return load_checkpoint(model_path)[0].eval()


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
    assert serve.crop_to_content(grey).shape == (10, 30)
    assert serve.crop_to_content(np.zeros((5, 5), np.uint8)).shape == (5, 5)
    assert serve.stretch_contrast(grey).max() == 255
    assert serve.stretch_contrast(grey)[0, 0] == 13  # 5 × 255 / 100, rounded


def test_a_catalogue_photo_of_a_garment_comes_back_close(fashion_splits) -> None:
    """Dark-on-white, tinted, enlarged with margins, JPEG: preprocessing undoes most of it."""
    corrs = []
    for pixels in fashion_splits["test"].images[:20]:
        photo = serve.catalogue_photo(pixels)
        assert Image.open(io.BytesIO(photo)).format == "JPEG"
        back = preprocess_image(photo).flatten()
        corrs.append(
            float(torch.corrcoef(torch.stack([back, reference_input(pixels).flatten()]))[0, 1])
        )
    assert np.mean(corrs) > 0.85 and min(corrs) > 0.6, corrs
    # without the inversion the garment is dark on black: anti-correlated with the training input
    back = preprocess_image(serve.catalogue_photo(pixels), invert=False).flatten()
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


def forged_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width × height`` pixels (a decompression-bomb shape)."""
    data = bytearray(encode(Image.new("L", (1, 1))))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
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
    assert limit > serve.DEFAULT_MAX_PIXELS  # the server's own limit is the stricter one
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


# --- the API: good requests -----------------------------------------------------------------------


def test_health(client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "ok",
        "model": "untrained.pt",
        "classes": list(CLASSES),
    }


def test_predict_matches_the_model(client, model, garments: torch.Tensor) -> None:
    for pixels in garments[:6]:
        response = post(client, encode_png(pixels))
        assert response.status_code == 200
        body = response.get_json()
        expected = int(model(reference_input(pixels)).argmax(1))
        assert body["class_index"] == expected and body["label"] == CLASSES[expected]
        assert list(body) == ["label", "class_index", "probabilities"]
        probs = body["probabilities"]
        assert len(probs) == 3 and probs[0]["class_index"] == expected
        assert [p["probability"] for p in probs] == sorted(
            (p["probability"] for p in probs), reverse=True
        )


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


def test_model_is_loaded_once_and_run_in_inference_mode(model_path: Path, monkeypatch) -> None:
    calls = []
    real = serve.load_checkpoint
    monkeypatch.setattr(serve, "load_checkpoint", lambda *a, **k: calls.append(a) or real(*a, **k))
    app = create_app(model_path)
    seen: list[tuple[bool, bool]] = []
    app.extensions["course_model"].register_forward_pre_hook(
        lambda m, args: seen.append((torch.is_inference_mode_enabled(), m.training))
    )
    test_client = app.test_client()
    for _ in range(3):
        assert (
            post(test_client, encode_png(torch.zeros(28, 28, dtype=torch.uint8))).status_code == 200
        )
    assert len(calls) == 1
    assert seen == [(True, False)] * 3


def test_a_missing_checkpoint_fails_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        create_app(tmp_path / "nope.pt")


# --- the API: every bad request is a 4xx JSON error -----------------------------------------------


def test_no_file_field(client) -> None:
    assert_json_error(post(client, None), 400, "field named 'file'")
    assert_json_error(post(client, b"\x89PNG", field="image"), 400, "fields received: ['image']")


def test_not_multipart(client) -> None:
    response = client.post("/predict", data=b"\x89PNG...", content_type="image/png")
    assert_json_error(response, 400, "multipart/form-data")


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


@pytest.mark.parametrize("k", ["0", "11", "-1", "three", ""])
def test_bad_top_k(client, k: str, garments: torch.Tensor) -> None:
    assert_json_error(post(client, encode_png(garments[0]), query=f"?top_k={k}"), 400, "top_k")


def test_a_bug_is_a_500_json_without_traceback(model_path: Path, monkeypatch) -> None:
    def broken(*args: object, **kw: object) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(serve, "preprocess_image", broken)
    response = post(create_app(model_path).test_client(), b"x")
    assert response.status_code == 500 and response.is_json
    assert "secret" not in response.get_data(as_text=True)


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


def test_real_server_under_concurrent_load(model_path: Path, model, garments: torch.Tensor) -> None:
    bodies = [encode_png(p) for p in garments]
    with torch.inference_mode():
        expected = model(torch.cat([reference_input(p) for p in garments])).argmax(1).tolist()
    local = __import__("threading").local()

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
        assert huge.status_code == 413 and "bytes allowed" in huge.json()["message"]
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


def test_bench_refuses_unbounded_runs(model_path: Path) -> None:
    with pytest.raises(ValueError, match="concurrency"):
        bench(model_path, n_requests=10, concurrency=1000)
    with pytest.raises(ValueError, match="concurrency"):
        bench_sweep(model_path, n_requests=10, concurrencies=[2, 0])
    with pytest.raises(ValueError, match="concurrency"):
        bench_sweep(model_path, n_requests=10, concurrencies=[])
