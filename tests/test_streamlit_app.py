"""The Streamlit app, driven headless with ``streamlit.testing.v1.AppTest``; its config file;
Grad-CAM in concurrent sessions."""

from __future__ import annotations

import copy
import importlib.util
import io
import logging
import os
import threading
import types
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from streamlit import config
from streamlit.testing.v1 import AppTest
from torch import nn

from course_utils.bad_files import write_decompression_bomb
from course_utils.data import CLASSES, FashionMNISTTensors
from course_utils.models import FashionCNN
from course_utils.paths import REPO_ROOT
from course_utils.train import save_checkpoint
from serving.serve import DEFAULT_MAX_BYTES
from serving.upload import encode_png, preprocess_image

APP = REPO_ROOT / "apps" / "streamlit_app.py"
TIMEOUT = 60  # AppTest's default of 3 s is too short for importing torch and loading the data


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    torch.manual_seed(0)
    monkeypatch.setenv("COURSE_MODEL_PATH", str(save_checkpoint(FashionCNN(), tmp_path / "m.pt")))
    return AppTest.from_file(str(APP), default_timeout=TIMEOUT)


@pytest.fixture
def started_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Streamlit started outside the repository root: no config file, its defaults apply."""
    monkeypatch.chdir(tmp_path)
    config.get_config_options(force_reparse=True)
    assert config.get_option("server.maxUploadSize") == 200  # Streamlit's default, in MB
    yield
    monkeypatch.undo()
    config.get_config_options(force_reparse=True)


def upload_mode(app: AppTest) -> AppTest:
    app.run()
    app.radio[0].set_value("Upload your own").run()
    assert not app.exception
    return app


def test_a_test_image_is_classified(app: AppTest) -> None:
    app.run()
    assert not app.exception and not app.error
    assert app.metric[0].value in CLASSES
    assert "True class: **Ankle boot**" in app.markdown[0].value  # test image 0 is an ankle boot
    app.number_input[0].set_value(1).run()
    assert "True class: **Pullover**" in app.markdown[0].value
    assert app.get("vega_lite_chart"), "no probability chart"
    captions = [caption for image in app.get("image") for caption in image.captions]
    assert captions == ["What the model sees (28×28)", "Where it looked (Grad-CAM)"]


def test_upload_without_a_file_asks_for_one(app: AppTest) -> None:
    upload_mode(app)
    assert "Upload a photo" in app.info[0].value
    assert not app.metric


def test_a_good_upload_is_classified(app: AppTest) -> None:
    photo = Image.new("RGB", (120, 90), "white")
    photo.paste((30, 30, 30), (40, 10, 80, 80))
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG")
    upload_mode(app).file_uploader[0].set_value(("shirt.jpg", buffer.getvalue(), "image/jpeg"))
    app.run()
    assert not app.exception and not app.error
    assert app.metric[0].value in CLASSES
    assert app.get("vega_lite_chart")


@pytest.mark.parametrize(
    ("content", "words"),
    [(b"this is not an image", "not a PNG or JPEG"), (b"\x89PNG\r\n\x1a\n\x00", "corrupt")],
)
def test_a_bad_upload_shows_an_error_not_an_exception(
    app: AppTest, content: bytes, words: str
) -> None:
    upload_mode(app).file_uploader[0].set_value(("broken.png", content, "image/png"))
    app.run()
    assert not app.exception
    assert words in app.error[0].value
    assert not app.metric


def test_a_too_large_upload_is_refused_with_the_limit(
    app: AppTest, started_elsewhere: None
) -> None:
    uploader = upload_mode(app).file_uploader[0]
    # the browser's cap, set by the widget itself, also without .streamlit/config.toml
    assert uploader.proto.max_upload_size_mb * 2**20 == DEFAULT_MAX_BYTES
    data = b"\x89PNG\r\n\x1a\n" + bytes(DEFAULT_MAX_BYTES - 7)  # one byte over
    uploader.set_value(("huge.png", data, "image/png"))
    app.run()
    assert not app.exception and not app.metric
    assert "the limit is 8 MB (8,388,608 bytes)" in app.error[0].value


def test_too_many_pixels_is_a_friendly_error(app: AppTest, tmp_path: Path) -> None:
    """A 30000×30000 PNG of ~110 KB: refused from its header, never decoded."""
    write_decompression_bomb(tmp_path / "bomb.png")
    bomb = (tmp_path / "bomb.png").read_bytes()
    upload_mode(app).file_uploader[0].set_value(("bomb.png", bomb, "image/png"))
    app.run()
    assert not app.exception and not app.metric
    assert app.error[0].value.startswith("This image is too large to decode")


def test_an_unexpected_error_is_a_sentence_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A real checkpoint the app does not expect (a model for RGB input) fails inside the
    forward pass: the browser gets one sentence, the server's log the traceback."""
    rgb = save_checkpoint(FashionCNN(in_channels=3), tmp_path / "rgb.pt")
    monkeypatch.setenv("COURSE_MODEL_PATH", str(rgb))
    with caplog.at_level(logging.ERROR, logger="streamlit_app"):
        app = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not app.exception
    assert app.error[0].value.startswith("Something went wrong on the server")
    shown = " ".join(str(e.value) for e in [*app.error, *app.markdown, *app.caption])
    assert "Traceback" not in shown and "RuntimeError" not in shown
    logged = [r for r in caplog.records if r.name == "streamlit_app"]
    assert logged and logged[0].exc_info and logged[0].exc_info[0] is RuntimeError


def test_a_missing_model_shows_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURSE_MODEL_PATH", str(tmp_path / "missing.pt"))
    app = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not app.exception
    assert "could not be loaded" in app.error[0].value


# --- the config file ----------------------------------------------------------------------------


def test_config_file_caps_uploads_binds_loopback_and_hides_tracebacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What Streamlit reads when started from the repository root (as the README says)."""
    monkeypatch.chdir(REPO_ROOT)
    config.get_config_options(force_reparse=True)
    expected = {
        "server.maxUploadSize": DEFAULT_MAX_BYTES // 2**20,  # MB of 2**20 bytes, as the API
        "server.address": "127.0.0.1",
        "client.showErrorDetails": "none",
    }
    assert DEFAULT_MAX_BYTES % 2**20 == 0
    for key, value in expected.items():
        assert config.get_option(key) == value, key
        assert config.get_where_defined(key) == str(REPO_ROOT / ".streamlit" / "config.toml")


# --- sessions: one shared model, Grad-CAM on a private copy -------------------------------------


def _app_module() -> types.ModuleType:
    """The app's functions, without running its page (that runs only as ``__main__``)."""
    spec = importlib.util.spec_from_file_location("streamlit_app", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _hooks(model: nn.Module) -> int:
    """How many hooks are registered on ``model`` and its submodules."""
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def test_each_session_gets_its_own_gradcam_model(app: AppTest) -> None:
    """Two sessions (AppTests) of the app: each explains with its own copy, left unhooked."""
    other = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    key = f"grad-cam model: {os.environ['COURSE_MODEL_PATH']}"
    copies = []
    for session in (app, other, app):  # the first session again: same copy on a rerun
        session.run()
        assert not session.exception and not session.error
        copies.append(session.session_state[key])
    assert copies[0] is not copies[1] and copies[2] is copies[0]
    assert _hooks(copies[0]) == _hooks(copies[1]) == 0


def test_concurrent_sessions_never_see_each_others_hooks(
    fashion_splits: dict[str, FashionMNISTTensors],
) -> None:
    """Eight sessions on eight threads, each predicting with the shared model and explaining
    its own image, three times: every map equals the one computed alone, and the shared model
    never carries a hook. (With Grad-CAM on the shared model, a session's forward pass fires
    another's hooks: maps of the wrong image, or 'runs more than once per forward pass'.)"""
    app = _app_module()
    torch.manual_seed(0)
    shared = FashionCNN().eval()
    xs = [preprocess_image(encode_png(image)) for image in fashion_splits["test"].images[:8]]
    alone = [app.gradcam_overlay(copy.deepcopy(shared), x) for x in xs]
    probs = [app.probabilities(shared, x) for x in xs]
    states: list[dict] = [{} for _ in xs]
    own = [app.session_model(state, shared, "m.pt") for state in states]
    assert all(m is not shared for m in own) and len({id(m) for m in own}) == len(own)
    assert app.session_model(states[0], shared, "m.pt") is own[0]  # made once per session
    hooks_seen: list[int] = []
    start = threading.Barrier(len(xs))

    def session(i: int) -> None:
        start.wait()
        for _ in range(3):
            hooks_seen.append(_hooks(shared))
            pd.testing.assert_frame_equal(app.probabilities(shared, xs[i]), probs[i])
            cam = app.gradcam_overlay(app.session_model(states[i], shared, "m.pt"), xs[i])
            assert np.abs(cam.astype(int) - alone[i]).max() <= 1, f"session {i}: another map"

    with ThreadPoolExecutor(len(xs)) as pool:
        list(pool.map(session, range(len(xs))))
    assert len(hooks_seen) == 24 and max(hooks_seen) == 0
    assert _hooks(shared) == 0 and all(_hooks(m) == 0 for m in own)
