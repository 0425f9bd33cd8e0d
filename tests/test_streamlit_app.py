"""The Streamlit app, driven headless with ``streamlit.testing.v1.AppTest``."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from course_utils.data import CLASSES
from course_utils.models import FashionCNN
from course_utils.paths import REPO_ROOT
from course_utils.train import save_checkpoint

APP = REPO_ROOT / "apps" / "streamlit_app.py"
TIMEOUT = 60  # AppTest's default of 3 s is too short for importing torch and loading the data


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    torch.manual_seed(0)
    monkeypatch.setenv("COURSE_MODEL_PATH", str(save_checkpoint(FashionCNN(), tmp_path / "m.pt")))
    return AppTest.from_file(str(APP), default_timeout=TIMEOUT)


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


def test_a_missing_model_shows_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURSE_MODEL_PATH", str(tmp_path / "missing.pt"))
    app = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not app.exception
    assert "could not be loaded" in app.error[0].value
