"""Chapter 9 ``check_*`` helpers: the right answer passes, each typical mistake fails."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch
from checks_support import fails, passes
from flask import Flask, jsonify, request
from PIL import Image
from torch import nn
from werkzeug.exceptions import HTTPException

from course_utils.checks.ch09 import (
    check_batch_response_fn,
    check_preprocess_fn,
)
from course_utils.checks.ch09_flask import check_flask_app
from course_utils.data import CLASSES, MEAN, STD
from serving import inference, serve, upload
from serving.upload import crop_to_content, fit_to_square, normalise, stretch_contrast

# --- 9.1: preprocess_upload -----------------------------------------------------------------------


def make_preprocess(**mistakes: bool):
    """The right ``preprocess_upload``, or one with a single typical mistake switched on."""

    def preprocess_upload(data: bytes) -> Any:
        if not data:
            raise ValueError("empty")
        if mistakes.get("no_try"):
            image = Image.open(io.BytesIO(data), formats=["PNG", "JPEG"])
            image.load()
        else:
            try:
                formats = None if mistakes.get("any_format") else ["PNG", "JPEG"]
                image = Image.open(io.BytesIO(data), formats=formats)
                if not mistakes.get("no_load"):
                    image.load()
            except OSError as err:
                raise ValueError(f"bad image: {err}") from err
        if image.mode in ("I;16", "I") and not mistakes.get("clip_16_bit"):
            grey = np.rint(np.asarray(image, dtype=np.float64) * 255 / 65535).astype(np.uint8)
        else:
            if (image.mode == "P" or "A" in image.getbands()) and not mistakes.get("no_alpha"):
                rgba = image.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(white, rgba)
            grey = np.asarray(image.convert("L"), dtype=np.uint8)
        border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
        if border.mean() > 127 and not mistakes.get("no_invert"):
            grey = 255 - grey
        if grey.shape != (28, 28):
            grey = stretch_contrast(fit_to_square(crop_to_content(grey)))
        if mistakes.get("unnormalised"):
            return torch.from_numpy(grey.astype(np.float32) / 255).reshape(1, 1, 28, 28)
        x = normalise(grey)
        if mistakes.get("no_batch_dim"):
            return x[0]
        if mistakes.get("numpy"):
            return x.numpy()
        return x

    return preprocess_upload


def test_preprocess_right_answer_passes(capsys: pytest.CaptureFixture[str]) -> None:
    check_preprocess_fn(make_preprocess())
    assert capsys.readouterr().out.startswith("✅ Exercise 9.1:")


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ("no_invert", "polarity"),
        ("unnormalised", "MEAN"),
        ("no_batch_dim", "(1, 1, 28, 28)"),
        ("numpy", "torch.Tensor"),
        ("clip_16_bit", "65535"),
        ("no_alpha", "white"),
        ("no_load", "load()"),
        ("no_try", "not ValueError"),
        ("any_format", "formats=['PNG', 'JPEG']"),
    ],
)
def test_preprocess_wrong_answer_fails(
    mistake: str, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(AssertionError) as err:
        check_preprocess_fn(make_preprocess(**{mistake: True}))
    assert hint in str(err.value)
    assert capsys.readouterr().out.startswith("❌ Exercise 9.1:")


def test_preprocess_unfinished_blank_is_passed_through() -> None:
    def blank(data: bytes) -> torch.Tensor:
        raise NotImplementedError("Exercise 9.1: …")

    with pytest.raises(NotImplementedError):
        check_preprocess_fn(blank)


def test_preprocess_silent_value_error_fails() -> None:
    right = make_preprocess()

    def no_message(data: bytes) -> torch.Tensor:
        try:
            return right(data)
        except ValueError:
            raise ValueError() from None

    with pytest.raises(AssertionError, match="without a message"):
        check_preprocess_fn(no_message)


def preprocess_with_package(data: bytes) -> torch.Tensor:
    return upload.preprocess_image(data)


def preprocess_with_package_parts(data: bytes) -> torch.Tensor:
    grey = to_grey(decode_image(data))  # names imported from serving.upload
    if upload.needs_inversion(grey):
        grey = 255 - grey
    if grey.shape != (28, 28):
        grey = stretch_contrast(fit_to_square(crop_to_content(grey)))
    return normalise(grey)


decode_image, to_grey = upload.decode_image, upload.to_grey  # `from serving.upload import …`


@pytest.mark.parametrize(
    ("shortcut", "label"),
    [
        (preprocess_with_package, "serving.upload.preprocess_image"),
        (preprocess_with_package_parts, ".decode_image"),
    ],
    ids=["package_preprocess_image", "package_decode_and_grey_imported_by_name"],
)
def test_preprocess_shortcut_is_refused(
    shortcut: Any, label: str, capsys: pytest.CaptureFixture[str]
) -> None:
    originals = {n: getattr(upload, n) for n in ("preprocess_image", "decode_image", "to_grey")}
    fails(check_preprocess_fn, shortcut, label, "9.1", capsys)
    for name, original in originals.items():
        assert getattr(upload, name) is original, f"upload.{name} was not restored"
    assert globals()["decode_image"] is originals["decode_image"], "the alias was not restored"


# --- 9.2: make_batch_response ---------------------------------------------------------------------


def make_batch_response_fn(**mistakes: bool):
    """The right ``make_batch_response``, or one with a single typical mistake switched on."""

    def body(probs: torch.Tensor, k: int) -> dict:
        values, indices = probs.topk(k)
        if mistakes.get("ascending"):
            values, indices = values.flip(0), indices.flip(0)
        to_num = (lambda v: v) if mistakes.get("tensors") else (lambda v: float(v.detach()))
        best = int(probs.argmax())
        return {
            "label": CLASSES[best],
            "class_index": best,
            "probabilities": [
                {"label": CLASSES[int(i)], "class_index": int(i), "probability": to_num(p)}
                for p, i in zip(values, indices, strict=True)
            ],
        }

    def make_batch_response(model: nn.Module, x: torch.Tensor, top_k: int = 3) -> dict:
        if not mistakes.get("train_mode"):
            model.eval()
        with torch.inference_mode(not mistakes.get("with_grad")):
            if mistakes.get("one_image_at_a_time"):
                logits = torch.cat([model(x[i : i + 1]) for i in range(len(x))])
            else:
                logits = model(x)
        if mistakes.get("logits"):
            probs = logits
        else:
            probs = torch.softmax(logits, dim=0 if mistakes.get("dim0") else 1)
        rows = probs[:1] if mistakes.get("first_only") else probs
        k = 3 if mistakes.get("fixed_k") else top_k
        return {"predictions": [body(row, k) for row in rows]}

    return make_batch_response


def test_batch_response_right_answer_passes(capsys: pytest.CaptureFixture[str]) -> None:
    passes(check_batch_response_fn, make_batch_response_fn(), "9.2", capsys)


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ("train_mode", "model.eval()"),
        ("with_grad", "inference_mode"),
        ("one_image_at_a_time", "one forward pass"),
        ("tensors", "float(p)"),
        ("logits", "softmax over dim 1"),
        ("dim0", "dim 0 is the batch"),
        ("ascending", "largest first"),
        ("fixed_k", "top_k"),
        ("first_only", "one dict per image"),
    ],
    ids=[
        "training_mode",
        "gradients_recorded",
        "one_forward_per_image",
        "torch_numbers_in_json",
        "logits_not_probabilities",
        "softmax_over_the_batch",
        "ascending_order",
        "top_k_ignored",
        "first_image_only",
    ],
)
def test_batch_response_wrong_answer_fails(
    mistake: str, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fails(check_batch_response_fn, make_batch_response_fn(**{mistake: True}), hint, "9.2", capsys)


def batch_response_with_package(model: nn.Module, x: torch.Tensor, top_k: int = 3) -> dict:
    model.eval()
    return {"predictions": [inference.predict_response(model, x, top_k)]}


def test_batch_response_shortcut_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    original = inference.predict_response
    fails(
        check_batch_response_fn,
        batch_response_with_package,
        "serving.inference.predict_response",
        "9.2",
        capsys,
    )
    assert inference.predict_response is original


def test_batch_response_numpy_numbers_fail(capsys: pytest.CaptureFixture[str]) -> None:
    right = make_batch_response_fn()

    def numpy_numbers(model: nn.Module, x: torch.Tensor, top_k: int = 3) -> dict:
        result = right(model, x, top_k)
        result["predictions"][0]["class_index"] = np.int64(result["predictions"][0]["class_index"])
        return result

    fails(check_batch_response_fn, numpy_numbers, "JSON-serialisable", "9.2", capsys)


# --- 9.3: make_app --------------------------------------------------------------------------------

MODULE_APP = Flask("module_level")


def make_app_fn(**mistakes: bool):
    """The right ``make_app``, or one with a single typical mistake switched on."""
    preprocess = make_preprocess()
    respond = make_batch_response_fn(train_mode=mistakes.get("train_mode", False))

    def make_app(model: nn.Module, max_bytes: int = 8 * 2**20) -> Flask:
        if not mistakes.get("train_mode"):
            model.eval()
        app = MODULE_APP if mistakes.get("module_level_app") else Flask(__name__)
        if not mistakes.get("no_limit"):
            app.config["MAX_CONTENT_LENGTH"] = max_bytes

        def error(status: int, name: str, message: str):
            return jsonify(error=name, message=message), status

        @app.post("/predict")
        def predict():
            raw_k = request.args.get("top_k", "3")
            if mistakes.get("no_top_k_check"):
                k = int(raw_k)
            else:
                if mistakes.get("isdigit_top_k"):  # '²'.isdigit() is True; int('²') raises
                    valid = raw_k.isdigit() and 1 <= int(raw_k) <= len(CLASSES)
                else:
                    valid = raw_k in {str(k) for k in range(1, 11)}
                if not valid:
                    return error(400, "bad parameter", f"top_k must be 1 to 10, got {raw_k!r}")
                k = int(raw_k)
            upload = request.files.get("file")
            if not mistakes.get("no_file_check") and upload is None:
                if mistakes.get("echo_fields"):
                    fields = sorted(set(request.files) | set(request.form))
                    return error(400, "no file", f"fields received: {fields}")
                return error(400, "no file", "send a field named 'file'")
            if mistakes.get("uncaught_image_error"):
                x = preprocess(upload.read())
            else:
                try:
                    x = preprocess(upload.read())
                except ValueError as err:
                    return error(400, "invalid image", str(err))
            if mistakes.get("logits"):
                with torch.inference_mode():
                    logits = model(x)[0]
                values, indices = logits.topk(k)
                return jsonify(
                    label=CLASSES[int(indices[0])],
                    class_index=int(indices[0]),
                    probabilities=[
                        {"label": CLASSES[int(i)], "class_index": int(i), "probability": float(v)}
                        for v, i in zip(values, indices, strict=True)
                    ],
                )
            if mistakes.get("with_grad"):
                with torch.enable_grad():
                    model(x)
            return jsonify(respond(model, x, k)["predictions"][0])

        if not mistakes.get("no_http_handler"):

            @app.errorhandler(HTTPException)
            def http_error(err: HTTPException):
                return error(err.code or 500, err.name.lower(), err.description or err.name)

        return app

    return make_app


def test_flask_app_right_answer_passes(capsys: pytest.CaptureFixture[str]) -> None:
    passes(check_flask_app, make_app_fn(), "9.3", capsys)


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ("train_mode", "model.eval()"),
        ("with_grad", "inference_mode"),
        ("no_limit", "MAX_CONTENT_LENGTH"),
        ("no_top_k_check", "validate top_k"),
        ("isdigit_top_k", "str.isdigit() is True for '²'"),
        ("echo_fields", "never echo the body's fields"),
        ("no_file_check", "request.files.get('file') is None"),
        ("uncaught_image_error", "catch the preprocessing error"),
        ("logits", "softmax over dim 1"),
        ("no_http_handler", "jsonify(error="),
        ("module_level_app", "inside make_app"),
    ],
    ids=[
        "training_mode",
        "gradients_recorded",
        "no_upload_size_limit",
        "top_k_not_validated_500",
        "top_k_isdigit_unicode_500",
        "form_fields_echoed",
        "missing_file_field_500",
        "bad_image_becomes_500",
        "logits_not_probabilities",
        "html_error_pages",
        "module_level_app_not_a_factory",
    ],
)
def test_flask_app_wrong_answer_fails(
    mistake: str, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fails(check_flask_app, make_app_fn(**{mistake: True}), hint, "9.3", capsys)


def app_with_package(model: nn.Module, max_bytes: int = 8 * 2**20) -> Flask:
    return serve.create_app("model.onnx", max_bytes=max_bytes)


def test_flask_app_shortcut_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    original = serve.create_app
    fails(check_flask_app, app_with_package, "serving.serve.create_app", "9.3", capsys)
    assert serve.create_app is original


def test_flask_app_unfinished_blank_is_passed_through() -> None:
    def blank(model: nn.Module, max_bytes: int = 8 * 2**20) -> Flask:
        raise NotImplementedError("Exercise 9.3")

    with pytest.raises(NotImplementedError):
        check_flask_app(blank)


def test_constants_used_by_the_checks_are_the_data_set_s() -> None:
    assert (MEAN, STD) == (0.2860, 0.3530)
