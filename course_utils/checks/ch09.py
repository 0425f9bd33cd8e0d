"""Checks of exercises 9.1 and 9.2: preprocessing an upload, the JSON body for a batch
(9.3, the Flask route: :mod:`course_utils.checks.ch09_flask`)."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from serving import inference, serve, upload

from ..data import CLASSES, MEAN, STD
from ._common import aliases, call, failure, passed, refuse, seeded_cnn

__all__ = ["check_batch_response_fn", "check_preprocess_fn"]

Case = tuple[str, bytes, str]  # an upload: its name, its bytes, the hint if it goes wrong

_PREPROCESS_SHORTCUTS = [
    (upload, name)  # where they are defined, and imported from
    for name in ("preprocess_image", "preprocess_array", "decode_image", "to_grey")
    + ("needs_inversion", "open_image")
] + [(serve, "preprocess_array")]  # the name serve's route calls, reachable as serve.<name>
_RESPONSE_SHORTCUTS = [(inference, "predict_response"), (serve, "create_app")]
_ALPHA = "composite the image onto white (Image.alpha_composite with a white RGBA image)"
_SOFTMAX = (
    "softmax over dim 1, the classes (dim 0 is the batch: over it, each probability is shared "
    "out among the images), the top k of row i for image i, each named by CLASSES[index]."
)
_LOAD = "Image.open reads only the header: call image.load() inside your try block, so that a "


def _encoded(image: Image.Image, fmt: str = "PNG", **kw: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def _preprocess_cases() -> tuple[list[Case], list[Case]]:
    """Uploads that must work (odd sizes and modes), and uploads that must raise ValueError."""
    garment = np.zeros((28, 28), dtype=np.uint8)  # a light, smoothly shaded shape on black
    garment[3:26, 6:22] = np.linspace(90, 255, 16).round().astype(np.uint8)
    garment[3:10, 2:26] = 200
    photo = Image.new("RGB", (97, 61), "white")  # a dark garment on white
    photo.paste((40, 50, 90), (30, 8, 70, 55))
    rgba = np.zeros((40, 64, 4), dtype=np.uint8)  # an opaque shaded garment, transparent around
    rgba[5:35, 20:44, :3] = np.linspace(20, 120, 24).round().astype(np.uint8)[None, :, None]
    rgba[5:35, 20:44, 3] = 255
    wide = np.zeros((30, 40), dtype=np.uint16)  # 16-bit: values up to 65535
    wide[5:25, 8:32], wide[10:20, 14:26] = 40000, 65535
    tall = Image.new("RGB", (12, 90), "white")
    tall.paste((0, 0, 0), (2, 10, 10, 80))
    palette = Image.new("RGB", (45, 33), (250, 250, 250))
    palette.paste((200, 0, 0), (10, 5, 35, 28))
    png, jpeg = _encoded(Image.fromarray(garment, mode="L")), _encoded(photo, "JPEG")
    good = [
        ("a 28×28 Fashion-MNIST-style PNG", png, "a 28×28 light-on-black PNG is exactly the "
         "training input: ((pixels / 255) - MEAN) / STD, shape [1, 1, 28, 28]."),
        ("a dark-on-white RGB JPEG, 97×61", _encoded(photo, "JPEG", quality=95), "convert to "
         "'L', fix the polarity (invert, 255 - grey, when the border's mean is above 127), then "
         "crop_to_content → fit_to_square → stretch_contrast."),
        ("an RGBA PNG with a transparent background", _encoded(Image.fromarray(rgba, "RGBA")),
         f"{_ALPHA} before converting to greyscale."),
        ("a palette (mode 'P') PNG, 45×33",
         _encoded(palette.convert("P", palette=Image.Palette.ADAPTIVE)),
         f"convert palette images to RGBA first, then {_ALPHA}."),
        ("a 16-bit greyscale PNG, 40×30", _encoded(Image.fromarray(wide)), "16-bit values go "
         "up to 65535: scale with np.asarray(image) * 255 / 65535 (rounded); convert('L') clips."),
        ("a 12×90 RGB PNG", _encoded(tall), "keep the aspect ratio: crop, then fit_to_square."),
    ]  # fmt: skip
    bad = [
        ("empty bytes", b"", "check for empty data and raise ValueError('… empty …')."),
        ("text, not an image", b"name,size\nshirt,M\n", "Image.open raises "
         "PIL.UnidentifiedImageError (an OSError): catch it and raise ValueError from it."),
        ("a GIF", _encoded(Image.new("RGB", (8, 8)), "GIF"),
         "accept PNG and JPEG only: Image.open(buffer, formats=['PNG', 'JPEG'])."),
        ("a truncated PNG", png[: len(png) // 2], _LOAD + "truncated file fails there."),
        ("a truncated JPEG", jpeg[: len(jpeg) // 3], _LOAD + "truncated file fails there."),
    ]  # fmt: skip
    return good, bad


def check_preprocess_fn(fn: Callable[[bytes], torch.Tensor]) -> None:
    """Exercise 9.1: ``preprocess_upload(data)`` gives what
    :func:`serving.upload.preprocess_image` gives (within a grey level) for six odd uploads, and
    ``ValueError`` with a message for five bad ones. The package's decoding, greyscale and
    polarity functions are switched off meanwhile (its framing helpers are allowed)."""
    ex = "9.1"
    good, bad = _preprocess_cases()
    references = [upload.preprocess_image(data) for _, data, _ in good]
    shortcuts = _PREPROCESS_SHORTCUTS + aliases([fn], _PREPROCESS_SHORTCUTS)
    with refuse(ex, shortcuts, task="the upload's decoding, greyscale and polarity"):
        for (name, data, hint), expected in zip(good, references, strict=True):
            got = call(ex, f"{name}: preprocess_upload", fn, data, hint=hint)
            _compare(ex, name, got, expected, hint)
        for name, data, hint in bad:
            try:
                fn(data)
            except (NotImplementedError, AssertionError):
                raise
            except ValueError as err:
                if str(err):
                    continue
                raise failure(ex, f"{name}: ValueError without a message", "say why.") from err
            except Exception as err:
                problem = f"{name}: raised {type(err).__name__} ({err}), not ValueError"
                why = "the API answers ValueError with a 4xx, anything else with a 500. "
                raise failure(ex, problem, why + hint) from err
            raise failure(ex, f"{name}: no error was raised", hint)
    passed(
        ex,
        f"preprocess_upload matches the API's preprocessing on {len(good)} uploads of odd sizes "
        f"and modes, and raises ValueError on {len(bad)} bad ones",
    )


def _compare(ex: str, name: str, got: Any, expected: torch.Tensor, hint: str) -> None:
    """A ❌ unless ``got`` is a float32 ``[1, 1, 28, 28]`` tensor within a grey level."""
    if not isinstance(got, torch.Tensor):
        problem = f"{name}: returned {type(got).__name__}, not a torch.Tensor"
        raise failure(ex, problem, "return the tensor normalise() makes.")
    if tuple(got.shape) != (1, 1, 28, 28) or got.dtype != torch.float32:
        problem = f"{name}: {got.dtype} {tuple(got.shape)}, expected float32 (1, 1, 28, 28)"
        raise failure(ex, problem, "the model takes a batch of float images [N, 1, 28, 28].")
    pixels, reference = ((t.detach() * STD + MEAN) * 255 for t in (got, expected))
    off = float((pixels - reference).abs().max())
    if off > 1.01:
        problem = f"{name}: differs from the reference by up to {off:.0f} grey levels"
        raise failure(ex, problem, hint)


def _recording_model(seed: int) -> tuple[nn.Module, list[tuple[bool, bool, int]]]:
    """A small CNN with dropout, and the (training, grad enabled, batch size) of each call."""
    model = seeded_cnn(seed, width=8, hidden=32, dropout=0.5)
    calls: list[tuple[bool, bool, int]] = []
    model.register_forward_pre_hook(
        lambda m, args: calls.append((m.training, torch.is_grad_enabled(), len(args[0])))
    )
    return model, calls


def _check_calls(ex: str, where: str, calls: list[tuple[bool, bool, int]]) -> None:
    """A ❌ unless the model ran once, in eval mode, without gradients."""
    if not calls:
        raise failure(ex, f"{where}the model was never called", "run model(x).")
    if any(training for training, _, _ in calls):
        hint = "call model.eval() first: dropout makes training-mode predictions random."
        raise failure(ex, f"{where}the model ran in training mode", hint)
    if any(grad for _, grad, _ in calls):
        hint = "run it under `with torch.inference_mode():`."
        raise failure(ex, f"{where}the forward pass recorded gradients", hint)
    if len(calls) != 1:
        problem = f"{where}the model ran {len(calls)} times (batch sizes {[n for *_, n in calls]})"
        hint = "run the whole batch in one forward pass, model(x), and split the rows afterwards."
        raise failure(ex, problem, hint)


def _body_problem(body: Any, expected: dict[str, Any], k: int, tol: float) -> str | None:
    """What is wrong with one prediction ``body`` against ``expected``, or ``None``."""
    entry = {"label", "class_index", "probability"}
    if not isinstance(body, dict) or set(body) != {"label", "class_index", "probabilities"}:
        keys = sorted(body) if isinstance(body, dict) else type(body).__name__
        return f"keys {keys}, expected ['class_index', 'label', 'probabilities']"
    probs = body["probabilities"]
    if not isinstance(probs, list) or len(probs) != k:
        count = len(probs) if isinstance(probs, list) else type(probs).__name__
        return f"top_k={k} but 'probabilities' has {count} entries"
    if any(not isinstance(p, dict) or set(p) != entry for p in probs):
        return "each entry of 'probabilities' must be {'label', 'class_index', 'probability'}"
    values = [p["probability"] for p in probs]
    if any(not isinstance(v, (int, float)) or not 0 <= v <= 1 for v in values):
        return f"'probabilities' holds {values[:3]}…, not values in [0, 1]"
    if values != sorted(values, reverse=True):
        return "'probabilities' is not sorted, largest first"
    wanted = {q["class_index"]: q["probability"] for q in expected["probabilities"]}
    if (body["class_index"], body["label"]) != (expected["class_index"], expected["label"]) or any(
        p["class_index"] not in wanted
        or p["label"] != CLASSES[p["class_index"]]
        or not math.isclose(p["probability"], wanted[p["class_index"]], abs_tol=tol)
        for p in probs
    ):
        want = [round(q["probability"], 4) for q in expected["probabilities"][:2]]
        got = [round(v, 4) for v in values[:2]]
        return f"got {body['label']!r} {got}…, expected {expected['label']!r} {want}…"
    return None


def check_batch_response_fn(fn: Callable[[nn.Module, torch.Tensor, int], dict[str, Any]]) -> None:
    """Exercise 9.2: ``make_batch_response(model, x, top_k)`` gives ``{"predictions": [...]}``,
    one :func:`serving.inference.predict_response` body per image, from one forward pass in eval
    mode without gradients, that survives ``json.dumps`` (the package's answer is switched
    off meanwhile)."""
    ex = "9.2"
    model, calls = _recording_model(0)
    gen = torch.Generator().manual_seed(1)
    cases = [
        (torch.randn(n, 1, 28, 28, generator=gen) * 2, k) for n, k in ((4, 3), (1, 1), (5, 10))
    ]
    model.eval()
    expected = [[inference.predict_response(model, row[None], k) for row in x] for x, k in cases]
    shortcuts = _RESPONSE_SHORTCUTS + aliases([fn], _RESPONSE_SHORTCUTS)
    with refuse(ex, shortcuts, task="the response"):
        for (x, k), wanted in zip(cases, expected, strict=True):
            n, hint = len(x), "one forward pass, softmax over dim 1, then .topk(top_k) by row."
            model.train()
            calls.clear()
            result = call(ex, f"make_batch_response(model, x of {n} images, top_k={k})", fn,
                          model, x, k, hint=hint)  # fmt: skip
            _check_calls(ex, f"a batch of {n}: ", calls)
            try:
                json.dumps(result)
            except TypeError as err:
                hint = "jsonify cannot encode torch or NumPy numbers: use float(p) and int(i)."
                raise failure(ex, f"the response is not JSON-serialisable ({err})", hint) from err
            bodies = result.get("predictions") if isinstance(result, dict) else None
            if not isinstance(bodies, list) or list(result) != ["predictions"]:
                raise failure(ex, f"returned {result!r:.60}", "return {'predictions': [...]}.")
            if len(bodies) != n:
                hint = "one dict per image, in the order of the batch's rows."
                raise failure(ex, f"a batch of {n} images gave {len(bodies)} predictions", hint)
            for i, body in enumerate(bodies):
                if problem := _body_problem(body, wanted[i], k, tol=1e-5):
                    problem = f"batch of {n}, top_k={k}, image {i + 1}: {problem}"
                    raise failure(ex, problem, _SOFTMAX)
    passed(
        ex,
        "make_batch_response runs the model once per batch, in eval mode under inference_mode, "
        "and returns JSON-serialisable predictions matching the API's for batches of 4, 1 and 5 "
        "(top_k = 3, 1, 10)",
    )
