"""The "Try the model" page in a real browser: ONNX Runtime Web against PyTorch.

What it covers, cheaply (no book build, about 15 s): the page's own files as the book ships them
(``book/_static/try/`` with its HTML fragment, wrapped in a bare page at the same relative place,
``book/_static/ort/``'s vendored ONNX Runtime Web, and ``models/`` staged by
:func:`course_utils.build.web_model.stage_model`, the function the book build calls), served on
127.0.0.1 to Debian's Chromium with every other host blocked. The model is a seeded
``FashionCNN`` exported with :func:`course_utils.export.export_onnx`, as chapter 8 does. The full
book page (Sphinx's wrapping, chapter 8's real file) is loaded by ``tests/test_site.py``.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
from browser_support import chromium, requires_chromium, serve_directory
from PIL import Image

from course_utils.bad_files import catalogue_photo
from course_utils.build import web_model
from course_utils.data import load_tensors
from course_utils.export import export_onnx
from course_utils.models import FashionCNN
from course_utils.paths import REPO_ROOT
from serving import upload

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [requires_chromium, pytest.mark.browser]  # Chromium
STATIC = REPO_ROOT / "book" / "_static"
N_IMAGES = 20


def build_site(root: Path, model_dir: Path) -> None:
    """The page's files at the book's relative places, with ``models/`` staged from
    ``model_dir``."""
    fragment = (STATIC / "try" / "try_model.html").read_text()
    (root / "book").mkdir(parents=True)
    (root / "book" / "try_model.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>Try the model</title></head>"
        f"<body><main>{fragment}</main></body></html>"
    )
    for name in ("try", "ort"):
        shutil.copytree(STATIC / name, root / "_static" / name)
    staging = root.parent / f"{root.name}_staging"
    web_model.stage_model(staging, quick=True, source=model_dir)
    shutil.copytree(staging / "book" / "_extra" / "models", root / "models")


@pytest.fixture(scope="module")
def site(model: FashionCNN, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Two sites on one loopback server: ``ok/`` with the model, ``missing/`` without."""
    root = tmp_path_factory.mktemp("sites")
    export_onnx(model, torch.zeros(2, 1, 28, 28), root / "export" / "fashion_cnn.onnx")
    build_site(root / "ok", root / "export")
    build_site(root / "missing", root / "nothing")
    with serve_directory(root) as url:
        yield url.rstrip("/")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with chromium() as instance:
        yield instance


def open_page(browser, url: str) -> tuple[object, list[str], list[str]]:
    """The page after ``tryModel.ready`` settled; its console errors and off-site requests."""
    page = browser.new_page()
    errors: list[str] = []
    external: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    def route(r) -> None:
        if urlparse(r.request.url).hostname == "127.0.0.1":
            r.continue_()
        else:
            external.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(url)
    page.wait_for_function("window.tryModel && window.tryModel.ready", timeout=30_000)
    page.evaluate("window.tryModel.ready")
    return page, errors, external


def upload_and_read(page, path: Path, count: int) -> dict:
    page.set_input_files("#try-file", str(path))
    page.wait_for_function(
        f"document.getElementById('try-top3').dataset.count === '{count}'", timeout=10_000
    )
    return page.evaluate("window.tryModel.last")


def test_twenty_test_images_match_pytorch(
    site: str, browser, model: FashionCNN, tmp_path: Path
) -> None:
    page, errors, external = open_page(browser, f"{site}/ok/book/try_model.html")
    assert page.get_attribute("#try-status", "data-state") == "ready", page.inner_text(
        "#try-status"
    )
    assert "SHA-256" in page.inner_text("#try-status")
    images = load_tensors(None)["test"].images[:N_IMAGES]
    worst, same = 0.0, 0
    for i, pixels in enumerate(images):
        data = upload.encode_png(pixels)
        path = tmp_path / f"test_{i}.png"
        path.write_bytes(data)
        got = upload_and_read(page, path, i + 1)
        x = upload.preprocess_array(data)  # what chapter 9's server feeds the model
        assert got["pixels"] == pixels.flatten().tolist(), f"image {i}: preprocessing differs"
        assert np.array_equal(np.float32(got["input"]), x.reshape(-1)), f"image {i}: input"
        with torch.no_grad():
            expected = torch.softmax(model(torch.from_numpy(x)), 1)[0].numpy()
        worst = max(worst, float(np.abs(np.array(got["probs"]) - expected).max()))
        same += int(got["top3"][0] == int(expected.argmax()))
    print(f"\n{N_IMAGES} test images: max |p_browser - p_torch| = {worst:.2e}, same top-1: {same}")
    assert worst <= 1e-4, f"largest probability difference {worst:.2e}"
    assert same == N_IMAGES, f"{N_IMAGES - same} predicted classes differ"
    assert page.locator("#try-top3 li").count() == 3
    assert not errors, errors
    assert not external, f"the page needs other hosts (breaks offline): {external}"


def larger_images() -> list[tuple[str, np.ndarray]]:
    """A shop-style photo as RGBA pixels (decoded by Pillow), and a transparent cut-out."""
    test = load_tensors(None)["test"].images
    photo = np.asarray(
        Image.open(io.BytesIO(catalogue_photo(test[0], size=(150, 110)))).convert("RGBA")
    )
    garment = test[1].numpy()
    cutout = np.zeros((84, 56, 4), np.uint8)
    big = np.asarray(Image.fromarray(garment).resize((56, 56), Image.Resampling.BICUBIC))
    cutout[14:70, :, :3] = (255 - big)[..., None]  # a dark garment...
    cutout[14:70, :, 3] = np.where(big > 20, 255, 0)  # ...cut out, on a transparent background
    return [("photo 150x110", photo), ("cut-out 56x84 with alpha", cutout)]


@pytest.mark.parametrize("index", [0, 1])
def test_larger_images_follow_the_servers_algorithm(site: str, browser, index: int) -> None:
    """Same RGBA pixels in (no browser decoder involved): crop, fit, stretch as the server.
    Pillow sometimes runs its two resize passes in the other order, so a few grey levels of
    difference are allowed (the page states it)."""
    name, rgba = larger_images()[index]
    page, errors, _ = open_page(browser, f"{site}/ok/book/try_model.html")
    got = page.evaluate(
        "([data, w, h]) => window.tryModel.classify(new Uint8ClampedArray(data), w, h)",
        [rgba.reshape(-1).tolist(), rgba.shape[1], rgba.shape[0]],
    )
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    grey = upload.preprocess_array(buffer.getvalue()).reshape(-1) * 0.3530 + 0.2860
    expected = np.rint(grey * 255).astype(int)
    diff = np.abs(np.array(got["pixels"]) - expected)
    exact = (diff == 0).mean()
    print(f"\n{name}: max grey diff {diff.max()}, mean {diff.mean():.3f}, exact {exact:.1%}")
    assert got["inverted"], name
    assert diff.max() <= 8 and diff.mean() <= 1.0, f"{name}: max {diff.max()}, {diff.mean():.2f}"
    assert not errors, errors


def test_drawing_is_classified(site: str, browser) -> None:
    page, errors, _ = open_page(browser, f"{site}/ok/book/try_model.html")
    box = page.locator("#try-draw").bounding_box()
    page.mouse.move(box["x"] + 60, box["y"] + 60)
    page.mouse.down()
    for x, y in [(220, 60), (220, 220), (60, 220), (60, 60)]:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=5)
    page.mouse.up()
    page.wait_for_function("document.getElementById('try-top3').dataset.count === '1'")
    last = page.evaluate("window.tryModel.last")
    assert last["inverted"] and max(last["pixels"]) == 255  # dark strokes on white, stretched
    assert page.locator("#try-top3 li").count() == 3
    assert not errors, errors


def test_the_page_works_from_the_keyboard_alone(site: str, browser) -> None:
    """Tab reaches the drawing area; arrow keys draw, Enter classifies; the results are in a
    live region (a screen reader announces them) and the file input has a label."""
    page, errors, _ = open_page(browser, f"{site}/ok/book/try_model.html")
    for _ in range(80):  # Tab through the page's controls until the drawing area has focus
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "try-draw":
            break
    else:
        raise AssertionError("Tab never reaches the drawing area")
    strokes = ["ArrowUp"] * 2 + ["ArrowRight"] * 2 + ["ArrowDown"] * 4 + ["ArrowLeft"] * 4
    for key in strokes + ["ArrowUp"] * 4 + ["ArrowRight"] * 2:
        page.keyboard.press(f"Shift+{key}")
    page.keyboard.press("Enter")
    page.wait_for_function("document.getElementById('try-top3').dataset.count === '1'")
    last = page.evaluate("window.tryModel.last")
    assert last["inverted"] and max(last["pixels"]) == 255  # dark strokes on white, stretched
    assert page.locator("#try-top3 li").count() == 3
    assert page.get_attribute("#try-top3", "aria-live") == "polite"
    assert page.get_by_label("upload a PNG or JPEG").get_attribute("id") == "try-file"
    assert not errors, errors


def test_missing_model_is_said_clearly(site: str, browser) -> None:
    page, errors, external = open_page(browser, f"{site}/missing/book/try_model.html")
    assert page.get_attribute("#try-status", "data-state") == "missing"
    text = page.inner_text("#try-status")
    assert "chapter 8" in text and "--only 08" in text, text
    assert page.is_disabled("#try-file")
    assert not errors and not external


def test_vendored_runtime_matches_its_record() -> None:
    record = web_model.verify_vendored()
    assert record["version"] == web_model.ORT_WEB_VERSION
    assert set(record["files"]) == set(web_model.ORT_FILES)
    manifest = json.loads((STATIC / "ort" / "ort-web.json").read_text())
    assert manifest["files"]["ort-wasm-simd-threaded.wasm"]["bytes"] > 1_000_000


def test_staging_refuses_a_model_that_does_not_match_its_hash(tmp_path: Path) -> None:
    source = tmp_path / "export"
    source.mkdir()
    (source / "fashion_cnn.onnx").write_bytes(b"not the exported bytes")
    (source / "fashion_cnn.onnx.sha256").write_text(f"{'0' * 64}  fashion_cnn.onnx\n")
    manifest = json.loads(web_model.stage_model(tmp_path / "site", True, source).read_text())
    assert manifest["available"] is False and "SHA-256" in manifest["reason"]
    assert not (tmp_path / "site" / "book" / "_extra" / "models" / "fashion_cnn.onnx").exists()


def test_greyscale_matches_the_server_for_every_grey_and_alpha(site: str, browser) -> None:
    """toGrey against upload.to_grey: all 256 × 256 (grey, alpha) pairs and 4,096 random colours
    with random alpha, so transparency is handled as the server does, byte for byte."""
    rng = np.random.default_rng(0)
    pairs = np.zeros((256, 256, 4), np.uint8)
    pairs[..., :3] = np.arange(256, dtype=np.uint8)[None, :, None]
    pairs[..., 3] = np.arange(256, dtype=np.uint8)[:, None]
    colours = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
    page, errors, _ = open_page(browser, f"{site}/ok/book/try_model.html")
    for rgba in (pairs, colours):
        h, w = rgba.shape[:2]
        got = page.evaluate(
            """async ([data, w, h]) => {
                const p = await import(new URL("../_static/try/preprocess.js", location.href));
                return Array.from(p.toGrey(new Uint8Array(data), w, h));
            }""",
            [rgba.reshape(-1).tolist(), w, h],
        )
        expected = upload.to_grey(Image.fromarray(rgba, "RGBA")).reshape(-1)
        bad = np.flatnonzero(np.array(got) != expected)
        assert bad.size == 0, f"{bad.size} pixels differ, first RGBA {rgba.reshape(-1, 4)[bad[0]]}"
    assert not errors, errors
