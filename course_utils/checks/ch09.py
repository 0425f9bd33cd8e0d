"""Checks of the chapter 9 exercises: serving: preprocessing an upload and the JSON response."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models import FashionCNN
from ._common import (
    failure,
    passed,
)

__all__ = [
    "check_preprocess_fn",
    "check_response_fn",
]


# --- Chapter 9 checks ---


def _encoded(image: Any, fmt: str = "PNG", **kw: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def _preprocess_cases() -> tuple[list[tuple[str, bytes, str]], list[tuple[str, bytes, str]]]:
    """``(name, bytes, hint)`` uploads that must work, and uploads that must raise ValueError."""
    from PIL import Image

    garment = np.zeros((28, 28), dtype=np.uint8)  # a light, smoothly shaded shape on black
    garment[3:26, 6:22] = np.linspace(90, 255, 16).round().astype(np.uint8)
    garment[3:10, 2:26] = 200
    photo = Image.new("RGB", (97, 61), "white")  # a dark garment on white, odd size, JPEG
    photo.paste((40, 50, 90), (30, 8, 70, 55))
    rgba = np.zeros((40, 64, 4), dtype=np.uint8)  # transparent (black) background
    rgba[5:35, 20:44, :3] = np.linspace(20, 120, 24).round().astype(np.uint8)[None, :, None]
    rgba[5:35, 20:44, 3] = 255  # an opaque garment, shaded from dark to mid-grey
    cutout = Image.fromarray(rgba, mode="RGBA")
    wide = np.zeros((30, 40), dtype=np.uint16)  # 16-bit: values up to 65535
    wide[5:25, 8:32] = 40000
    wide[10:20, 14:26] = 65535
    tall = Image.new("RGB", (12, 90), (255, 255, 255))
    tall.paste((0, 0, 0), (2, 10, 10, 80))
    palette = Image.new("RGB", (45, 33), (250, 250, 250))
    palette.paste((200, 0, 0), (10, 5, 35, 28))
    good = [
        (
            "a 28×28 Fashion-MNIST-style PNG",
            _encoded(Image.fromarray(garment, mode="L")),
            "a 28×28 light-on-black PNG must give exactly the training input: "
            "((pixels / 255) - MEAN) / STD, shape [1, 1, 28, 28].",
        ),
        (
            "a dark-on-white RGB JPEG, 97×61",
            _encoded(photo, "JPEG", quality=95),
            "convert to greyscale ('L'), invert when the border is light (mean > 127), then "
            "frame with crop_to_content → fit_to_square → stretch_contrast.",
        ),
        (
            "an RGBA PNG with a transparent background",
            _encoded(cutout),
            "composite the image onto a white background before converting to greyscale "
            "(Image.alpha_composite with a white RGBA image); transparent pixels are background.",
        ),
        (
            "a palette (mode 'P') PNG, 45×33",
            _encoded(palette.convert("P", palette=Image.Palette.ADAPTIVE)),
            "convert palette images to RGBA first, then composite and convert to 'L'.",
        ),
        (
            "a 16-bit greyscale PNG, 40×30",
            _encoded(Image.fromarray(wide)),
            "a 16-bit image has values up to 65535: scale with np.asarray(image) * 255 / 65535 "
            "(rounded) instead of convert('L'), which clips.",
        ),
        (
            "a 12×90 RGB PNG",
            _encoded(tall),
            "the framing must keep the aspect ratio: crop, then fit_to_square pads the short side.",
        ),
    ]
    full = _encoded(Image.fromarray(garment, mode="L"))
    jpeg = _encoded(photo, "JPEG")
    bad = [
        ("empty bytes", b"", "check for empty data and raise ValueError('… empty …')."),
        (
            "text, not an image",
            b"name,size\nshirt,M\n",
            "Image.open raises PIL.UnidentifiedImageError (an OSError): catch it and raise "
            "ValueError from it.",
        ),
        (
            "a GIF",
            _encoded(Image.new("RGB", (8, 8)), "GIF"),
            "accept PNG and JPEG only: Image.open(buffer, formats=['PNG', 'JPEG']).",
        ),
        (
            "a truncated PNG",
            full[: len(full) // 2],
            "Image.open reads only the header: call image.load() inside your try block, so a "
            "truncated file fails there (with an OSError you turn into ValueError).",
        ),
        (
            "a truncated JPEG",
            jpeg[: len(jpeg) // 3],
            "call image.load() inside the try block and turn the OSError into a ValueError.",
        ),
    ]
    return good, bad


def check_preprocess_fn(fn: Callable[[bytes], torch.Tensor]) -> None:
    """Exercise 9.1: ``preprocess_upload(data: bytes) -> torch.Tensor`` for the ``/predict`` API.

    Six uploads of odd sizes and modes (an exact 28×28 PNG, a dark-on-white JPEG, RGBA with
    transparency, a palette PNG, a 16-bit PNG, a 12×90 image) must give a float tensor
    ``[1, 1, 28, 28]`` within one grey level of :func:`course_utils.serve.preprocess_image`; five
    bad ones (empty, text, GIF, truncated PNG and JPEG) must raise ``ValueError``.

    Raises:
        AssertionError: with a hint naming the likely mistake.
    """
    from course_utils.data import MEAN, STD
    from course_utils.serve import preprocess_image

    ex = "9.1"
    good, bad = _preprocess_cases()
    for name, data, hint in good:
        try:
            result = fn(data)
        except NotImplementedError:
            raise
        except Exception as err:
            raise failure(
                ex, f"{name}: preprocess_upload raised {type(err).__name__}: {err}", hint
            ) from err
        if not isinstance(result, torch.Tensor):
            raise failure(
                ex,
                f"{name}: returned {type(result).__name__}, not a torch.Tensor",
                "return torch.from_numpy(...) of the normalised pixels (normalise() does it).",
            )
        if tuple(result.shape) != (1, 1, 28, 28):
            raise failure(
                ex,
                f"{name}: shape {tuple(result.shape)}, expected (1, 1, 28, 28)",
                "the model takes a batch: [batch 1, channel 1, 28, 28]; .reshape(1, 1, 28, 28).",
            )
        if result.dtype != torch.float32:
            raise failure(
                ex, f"{name}: dtype {result.dtype}", "convert to float32 before normalising."
            )
        expected = preprocess_image(data)
        pixels = (result.detach().float() * STD + MEAN) * 255
        reference = (expected * STD + MEAN) * 255
        if float((pixels - reference).abs().max()) <= 1.01:
            continue
        if float(result.min()) >= 0 and float(result.max()) <= 1.0:
            hint = (
                "normalise: (pixels / 255 - MEAN) / STD, with MEAN and STD from course_utils.data."
            )
        elif float(torch.corrcoef(torch.stack([pixels.flatten(), reference.flatten()]))[0, 1]) < 0:
            hint = (
                "the image came out with the wrong polarity: Fashion-MNIST is light on black, so "
                "invert (255 - grey) when the border's mean is above 127. " + hint
            )
        shown = float((pixels - reference).abs().max())
        raise failure(
            ex, f"{name}: differs from the reference by up to {shown:.0f} grey levels", hint
        )
    for name, data, hint in bad:
        try:
            fn(data)
        except NotImplementedError:
            raise
        except ValueError as err:
            if not str(err):
                raise failure(
                    ex, f"{name}: ValueError without a message", "say what is wrong with the file."
                ) from err
            continue
        except Exception as err:
            raise failure(
                ex,
                f"{name}: raised {type(err).__name__} ({err}), not ValueError",
                "the API turns ValueError into a 4xx answer; anything else becomes a 500. " + hint,
            ) from err
        raise failure(ex, f"{name}: no error was raised", hint)
    passed(
        ex,
        f"preprocess_upload matches the API's preprocessing on {len(good)} uploads of odd sizes "
        f"and modes, and raises ValueError on {len(bad)} bad ones",
    )


def check_response_fn(fn: Callable[[nn.Module, torch.Tensor, int], dict[str, Any]]) -> None:
    """Exercise 9.2: ``make_response(model, x, top_k) -> dict``, the ``/predict`` JSON body.

    On a small CNN with dropout (so training mode changes its output) and three inputs, the
    result must survive ``json.dumps``, have ``label``, ``class_index`` and ``probabilities`` (the
    ``top_k`` largest softmax probabilities, largest first, as ``{"label", "class_index",
    "probability"}``), match :func:`course_utils.serve.predict_response`, and the forward pass must
    run in eval mode without gradients.

    Raises:
        AssertionError: with a hint naming the likely mistake.
    """
    import json

    from course_utils.serve import predict_response

    ex = "9.2"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = FashionCNN(width=8, hidden=32, dropout=0.5)
        inputs = [torch.randn(1, 1, 28, 28) * 2 for _ in range(3)]
    calls: list[tuple[bool, bool]] = []
    hook = model.register_forward_pre_hook(
        lambda m, args: calls.append((m.training, torch.is_grad_enabled()))
    )
    try:
        for i, (x, k) in enumerate(zip(inputs, (3, 1, 10), strict=True)):
            model.eval()
            expected = predict_response(model, x, k)
            model.train()
            calls.clear()
            try:
                result = fn(model, x, k)
            except NotImplementedError:
                raise
            except Exception as err:
                raise failure(
                    ex,
                    f"make_response raised {type(err).__name__}: {err}",
                    "softmax the logits over dim 1, then .topk(top_k) gives values and indices.",
                ) from err
            if not calls:
                raise failure(ex, "the model was never called", "run model(x).")
            if any(training for training, _ in calls):
                raise failure(
                    ex,
                    "the model ran in training mode",
                    "call model.eval() first: dropout makes training-mode predictions random.",
                )
            if any(grad for _, grad in calls):
                raise failure(
                    ex,
                    "the forward pass recorded gradients",
                    "wrap it in `with torch.inference_mode():`.",
                )
            try:
                json.dumps(result)
            except TypeError as err:
                raise failure(
                    ex,
                    f"the response is not JSON-serialisable ({err})",
                    "jsonify cannot encode torch or NumPy numbers: use float(p) and int(i).",
                ) from err
            if not isinstance(result, dict) or list(result) != list(expected):
                keys = list(result) if isinstance(result, dict) else type(result).__name__
                raise failure(
                    ex,
                    f"keys {keys}, expected {list(expected)}",
                    "return a dict with 'label', 'class_index' and 'probabilities', in that order.",
                )
            probs = result["probabilities"]
            if not isinstance(probs, list) or len(probs) != k:
                raise failure(
                    ex,
                    f"top_k={k} but 'probabilities' has "
                    f"{len(probs) if isinstance(probs, list) else type(probs).__name__} entries",
                    "give exactly top_k entries, a list of dicts.",
                )
            if any(
                not isinstance(p, dict) or set(p) != {"label", "class_index", "probability"}
                for p in probs
            ):
                raise failure(
                    ex,
                    "each entry of 'probabilities' must be {'label', 'class_index', 'probability'}",
                    "build one small dict per class.",
                )
            values = [p["probability"] for p in probs]
            if any(v < 0 or v > 1 for v in values):
                raise failure(
                    ex,
                    f"'probabilities' holds {values[:3]}…, not values in [0, 1]",
                    "these look like logits: apply torch.softmax(logits, dim=1) first.",
                )
            if values != sorted(values, reverse=True):
                raise failure(
                    ex, "'probabilities' is not sorted, largest first", "topk sorts for you."
                )
            same = result["class_index"] == expected["class_index"] and all(
                p["class_index"] == q["class_index"]
                and math.isclose(p["probability"], q["probability"], abs_tol=1e-5)
                for p, q in zip(probs, expected["probabilities"], strict=True)
            )
            if not same or result["label"] != expected["label"]:
                raise failure(
                    ex,
                    f"input {i + 1}: got {result['label']!r} {values[:2]}…, expected "
                    f"{expected['label']!r} "
                    f"{[round(q['probability'], 4) for q in expected['probabilities'][:2]]}…",
                    "softmax over dim 1 (the classes), take the top k, and name each class with "
                    "CLASSES[index].",
                )
    finally:
        hook.remove()
    passed(
        ex,
        "make_response runs the model in eval mode under inference_mode and returns a "
        "JSON-serialisable body matching the API's on 3 inputs (top_k = 3, 1, 10)",
    )
