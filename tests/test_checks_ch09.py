"""Chapter 9 ``check_*`` helpers: the right answer passes, each typical mistake fails."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from course_utils.checks.ch09 import check_preprocess_fn, check_response_fn
from course_utils.data import CLASSES, MEAN, STD
from course_utils.serve import crop_to_content, fit_to_square, normalise, stretch_contrast

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


# --- 9.2: make_response ---------------------------------------------------------------------------


def make_response_fn(**mistakes: bool):
    def make_response(model: nn.Module, x: torch.Tensor, top_k: int = 3) -> dict:
        if not mistakes.get("train_mode"):
            model.eval()
        with torch.inference_mode(not mistakes.get("with_grad")):
            logits = model(x)
        if mistakes.get("logits"):
            probs = logits[0]
        else:
            probs = torch.softmax(logits, dim=0 if mistakes.get("dim0") else 1)[0]
        k = 3 if mistakes.get("fixed_k") else top_k
        values, indices = probs.topk(k, largest=True, sorted=True)
        if mistakes.get("ascending"):
            values, indices = values.flip(0), indices.flip(0)
        best = int(probs.argmax())
        to_num = (lambda v: v) if mistakes.get("tensors") else (lambda v: float(v.detach()))
        return {
            "label": CLASSES[best],
            "class_index": best,
            "probabilities": [
                {"label": CLASSES[int(i)], "class_index": int(i), "probability": to_num(p)}
                for p, i in zip(values, indices, strict=True)
            ],
        }

    return make_response


def test_response_right_answer_passes(capsys: pytest.CaptureFixture[str]) -> None:
    check_response_fn(make_response_fn())
    assert capsys.readouterr().out.startswith("✅ Exercise 9.2:")


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ("train_mode", "model.eval()"),
        ("with_grad", "inference_mode"),
        ("tensors", "float(p)"),
        ("logits", "softmax"),
        ("ascending", "largest first"),
        ("fixed_k", "top_k"),
        ("dim0", "dim 1"),
    ],
)
def test_response_wrong_answer_fails(
    mistake: str, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(AssertionError) as err:
        check_response_fn(make_response_fn(**{mistake: True}))
    assert hint in str(err.value)
    assert capsys.readouterr().out.startswith("❌ Exercise 9.2:")


def test_response_numpy_numbers_fail() -> None:
    right = make_response_fn()

    def numpy_numbers(model: nn.Module, x: torch.Tensor, top_k: int = 3) -> dict:
        body = right(model, x, top_k)
        body["class_index"] = np.int64(body["class_index"])
        return body

    with pytest.raises(AssertionError, match="JSON-serialisable"):
        check_response_fn(numpy_numbers)


def test_constants_used_by_the_checks_are_the_data_set_s() -> None:
    assert (MEAN, STD) == (0.2860, 0.3530)
