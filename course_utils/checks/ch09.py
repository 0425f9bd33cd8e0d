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
from torch import nn

from serving import inference, serve, upload

from ..data import CLASSES, MEAN, STD
from ..models import FashionCNN
from ._common import aliases, call, failure, passed, refuse

__all__ = [
    "check_batch_response_fn",
    "check_preprocess_fn",
]


def _encoded(image: Any, fmt: str = "PNG", **kw: Any) -> bytes:
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


# --- 9.1 ---------------------------------------------------------------------------------------

_PREPROCESS_SHORTCUTS = [
    (module, name)
    for module in (serve, upload)  # defined in upload, re-exported by serve
    for name in (
        "preprocess_image",
        "preprocess_array",
        "open_image",
        "decode_image",
        "to_grey",
        "needs_inversion",
    )
]


def check_preprocess_fn(fn: Callable[[bytes], torch.Tensor]) -> None:
    """Exercise 9.1: ``preprocess_upload(data: bytes) -> torch.Tensor`` for the ``/predict`` API.

    Six uploads of odd sizes and modes (an exact 28×28 PNG, a dark-on-white JPEG, RGBA with
    transparency, a palette PNG, a 16-bit PNG, a 12×90 image) must give a float tensor
    ``[1, 1, 28, 28]`` within one grey level of :func:`serving.serve.preprocess_image`; five
    bad ones (empty, text, GIF, truncated PNG and JPEG) must raise ``ValueError``. The package's
    ``preprocess_image``, ``preprocess_array``, ``open_image``, ``decode_image``, ``to_grey`` and
    ``needs_inversion`` are switched off while ``fn`` runs (the framing helpers stay allowed).

    Raises:
        AssertionError: with a hint naming the likely mistake.
    """
    ex = "9.1"
    good, bad = _preprocess_cases()
    references = [serve.preprocess_image(data) for _, data, _ in good]
    shortcuts = _PREPROCESS_SHORTCUTS + aliases([fn], _PREPROCESS_SHORTCUTS)
    with refuse(ex, shortcuts, task="the upload's decoding, greyscale and polarity"):
        for (name, data, hint), expected in zip(good, references, strict=True):
            result = call(ex, f"{name}: preprocess_upload", fn, data, hint=hint)
            _compare_preprocessed(ex, name, result, expected, hint)
        for name, data, hint in bad:
            try:
                fn(data)
            except (NotImplementedError, AssertionError):
                raise
            except ValueError as err:
                if not str(err):
                    raise failure(
                        ex,
                        f"{name}: ValueError without a message",
                        "say what is wrong with the file.",
                    ) from err
                continue
            except Exception as err:
                raise failure(
                    ex,
                    f"{name}: raised {type(err).__name__} ({err}), not ValueError",
                    "the API turns ValueError into a 4xx answer; anything else becomes a 500. "
                    + hint,
                ) from err
            raise failure(ex, f"{name}: no error was raised", hint)
    passed(
        ex,
        f"preprocess_upload matches the API's preprocessing on {len(good)} uploads of odd sizes "
        f"and modes, and raises ValueError on {len(bad)} bad ones",
    )


def _compare_preprocessed(
    ex: str, name: str, result: Any, expected: torch.Tensor, hint: str
) -> None:
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
        raise failure(ex, f"{name}: dtype {result.dtype}", "convert to float32 before normalising.")
    pixels = (result.detach().float() * STD + MEAN) * 255
    reference = (expected * STD + MEAN) * 255
    shown = float((pixels - reference).abs().max())
    if shown <= 1.01:
        return
    if float(result.min()) >= 0 and float(result.max()) <= 1.0:
        hint = "normalise: (pixels / 255 - MEAN) / STD, with MEAN and STD from course_utils.data."
    elif float(torch.corrcoef(torch.stack([pixels.flatten(), reference.flatten()]))[0, 1]) < 0:
        hint = (
            "the image came out with the wrong polarity: Fashion-MNIST is light on black, so "
            "invert (255 - grey) when the border's mean is above 127. " + hint
        )
    raise failure(ex, f"{name}: differs from the reference by up to {shown:.0f} grey levels", hint)


# --- 9.2 ---------------------------------------------------------------------------------------

_RESPONSE_SHORTCUTS = [
    (serve, "predict_response"),
    (inference, "predict_response"),
    (serve, "create_app"),
]


def _recording_model(seed: int) -> tuple[nn.Module, list[tuple[bool, bool, int]]]:
    """A small CNN with dropout, and the (training, grad enabled, batch size) of each call."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = FashionCNN(width=8, hidden=32, dropout=0.5)
    calls: list[tuple[bool, bool, int]] = []
    model.register_forward_pre_hook(
        lambda m, args: calls.append((m.training, torch.is_grad_enabled(), args[0].shape[0]))
    )
    return model, calls


def _body_problem(body: Any, expected: dict[str, Any], k: int, tol: float) -> str | None:
    """What is wrong with one prediction ``body`` compared with ``expected``, or ``None``."""
    if not isinstance(body, dict) or set(body) != {"label", "class_index", "probabilities"}:
        keys = sorted(body) if isinstance(body, dict) else type(body).__name__
        return f"keys {keys}, expected ['class_index', 'label', 'probabilities']"
    probs = body["probabilities"]
    if not isinstance(probs, list) or len(probs) != k:
        count = len(probs) if isinstance(probs, list) else type(probs).__name__
        return f"top_k={k} but 'probabilities' has {count} entries"
    if any(
        not isinstance(p, dict) or set(p) != {"label", "class_index", "probability"} for p in probs
    ):
        return "each entry of 'probabilities' must be {'label', 'class_index', 'probability'}"
    values = [p["probability"] for p in probs]
    if any(not isinstance(v, (int, float)) or v < 0 or v > 1 for v in values):
        return f"'probabilities' holds {values[:3]}…, not values in [0, 1]"
    if values != sorted(values, reverse=True):
        return "'probabilities' is not sorted, largest first"
    wanted = {q["class_index"]: q["probability"] for q in expected["probabilities"]}
    same = body["class_index"] == expected["class_index"] and all(
        p["class_index"] in wanted
        and math.isclose(p["probability"], wanted[p["class_index"]], abs_tol=tol)
        and p["label"] == CLASSES[p["class_index"]]
        for p in probs
    )
    if not same or body["label"] != expected["label"]:
        return (
            f"got {body['label']!r} {[round(v, 4) for v in values[:2]]}…, expected "
            f"{expected['label']!r} "
            f"{[round(q['probability'], 4) for q in expected['probabilities'][:2]]}…"
        )
    return None


def check_batch_response_fn(
    fn: Callable[[nn.Module, torch.Tensor, int], dict[str, Any]],
) -> None:
    """Exercise 9.2: ``make_batch_response(model, x, top_k)``, the JSON body for a batch.

    ``x`` holds ``n`` images ``[n, 1, 28, 28]``; the answer is ``{"predictions": [body, …]}``,
    one body per image in order, each what :func:`serving.serve.predict_response` gives for
    that image alone. The model (with dropout, handed over in training mode) must run once for
    the whole batch, in eval mode, without gradients, and the result must survive
    ``json.dumps``. ``predict_response`` and ``create_app`` are switched off while ``fn`` runs.

    Raises:
        AssertionError: with a hint naming the likely mistake.
    """
    ex = "9.2"
    model, calls = _recording_model(0)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        batches = [torch.randn(n, 1, 28, 28) * 2 for n in (4, 1, 5)]
    cases = list(zip(batches, (3, 1, 10), strict=True))
    model.eval()
    expected = [
        [serve.predict_response(model, x[i : i + 1], k) for i in range(len(x))] for x, k in cases
    ]
    with torch.inference_mode():
        by_batch = [torch.softmax(model(x), dim=0) for x, _ in cases]  # the dim-0 mistake
    shortcuts = _RESPONSE_SHORTCUTS + aliases([fn], _RESPONSE_SHORTCUTS)
    with refuse(ex, shortcuts, task="the response"):
        for (x, k), wanted, wrong_dim in zip(cases, expected, by_batch, strict=True):
            n = len(x)
            model.train()
            calls.clear()
            result = call(
                ex,
                f"make_batch_response(model, x of {n} images, top_k={k})",
                fn,
                model,
                x,
                k,
                hint="one forward pass, softmax over dim 1, then .topk(top_k) row by row.",
            )
            if not calls:
                raise failure(ex, "the model was never called", "run model(x) once.")
            if any(training for training, _, _ in calls):
                raise failure(
                    ex,
                    "the model ran in training mode",
                    "call model.eval() first: dropout makes training-mode predictions random.",
                )
            if any(grad for _, grad, _ in calls):
                raise failure(
                    ex,
                    "the forward pass recorded gradients",
                    "wrap it in `with torch.inference_mode():`.",
                )
            if len(calls) != 1:
                raise failure(
                    ex,
                    f"the model ran {len(calls)} times for a batch of {n} "
                    f"(batch sizes {[size for *_, size in calls]})",
                    "run the whole batch in one forward pass, model(x), and split the rows "
                    "afterwards: that is what makes a batch endpoint cheaper than n requests.",
                )
            try:
                json.dumps(result)
            except TypeError as err:
                raise failure(
                    ex,
                    f"the response is not JSON-serialisable ({err})",
                    "jsonify cannot encode torch or NumPy numbers: use float(p) and int(i).",
                ) from err
            if not isinstance(result, dict) or list(result) != ["predictions"]:
                keys = list(result) if isinstance(result, dict) else type(result).__name__
                raise failure(
                    ex, f"keys {keys}, expected ['predictions']", "return {'predictions': [...]}."
                )
            bodies = result["predictions"]
            if not isinstance(bodies, list) or len(bodies) != n:
                count = len(bodies) if isinstance(bodies, list) else type(bodies).__name__
                raise failure(
                    ex,
                    f"a batch of {n} images gave {count} predictions",
                    "one dict per image, in the order of the batch's rows.",
                )
            for i, (body, reference) in enumerate(zip(bodies, wanted, strict=True)):
                problem = _body_problem(body, reference, k, tol=1e-5)
                if problem is None:
                    continue
                values = [p.get("probability") for p in body.get("probabilities", [])]
                top = wrong_dim[i].sort(descending=True).values[: len(values)].tolist()
                if values and all(
                    isinstance(v, float) and math.isclose(v, t, abs_tol=1e-5)
                    for v, t in zip(values, top, strict=False)
                ):
                    hint = (
                        "softmax over dim 1, the classes: dim 0 is the batch, so each "
                        "'probability' was shared out among the images instead of the classes."
                    )
                else:
                    hint = (
                        "softmax over dim 1 (the classes), take the top k of row i for image i, "
                        "and name each class with CLASSES[index]."
                    )
                raise failure(ex, f"batch of {n}, top_k={k}, image {i + 1}: {problem}", hint)
    passed(
        ex,
        "make_batch_response runs the model once per batch, in eval mode under inference_mode, "
        "and returns JSON-serialisable predictions matching the API's for batches of 4, 1 and 5 "
        "(top_k = 3, 1, 10)",
    )
