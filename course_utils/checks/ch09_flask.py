"""Check of exercise 9.3: the Flask ``/predict`` route, driven through ``app.test_client()``."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from serving import serve

from ..data import CLASSES
from ._common import ShortcutRefused, aliases, call, failure, passed, refuse
from .ch09 import _RESPONSE_SHORTCUTS, _body_problem, _preprocess_cases, _recording_model

__all__ = ["check_flask_app"]


# --- 9.3 ---------------------------------------------------------------------------------------

_MAX_BYTES = 50_000
_TOP_K_HINT = (
    "validate top_k before using it: raw = request.args.get('top_k', '3'); if raw is not one "
    "of '1' … '10' (raw not in {str(k) for k in range(1, 11)}), answer 400 with a JSON error."
)
_UNICODE_DIGIT_HINT = (
    "str.isdigit() is True for '²' and other Unicode digits, and int('²') then raises (a 500); "
    "int() also refuses 5,000 digits. Accept only the strings '1' … '10': "
    "raw not in {str(k) for k in range(1, 11)} → 400."
)
_FORM_HINT = (
    "a body that is not multipart/form-data has no 'file': answer 400 or 415 with a short JSON "
    "message, and never echo the body's fields back (200,000 of them would make a 2 MB answer)."
)
_SECRET = "secret-field"
_IMAGE_HINT = (
    "catch the preprocessing error (ValueError; the package's PreprocessError is one and "
    "carries .status) and answer with its 4xx status and a JSON error."
)


def _bad_requests(
    png: bytes, csv: bytes, truncated: bytes
) -> list[tuple[str, str, str, dict[str, bytes] | bytes | None, set[int], str]]:
    """``(name, method, url, form, allowed statuses, hint)`` for requests the API must refuse;
    a ``bytes`` form is sent as an URL-encoded body."""
    return [
        (
            "an upload in a field named 'image', not 'file'",
            "POST",
            "/predict",
            {"image": png},
            {400},
            "request.files.get('file') is None when the field is missing: answer 400 with a "
            "JSON error that says which field to send.",
        ),
        ("a CSV file, not an image", "POST", "/predict", {"file": csv}, {400, 415}, _IMAGE_HINT),
        ("a truncated PNG", "POST", "/predict", {"file": truncated}, {400}, _IMAGE_HINT),
        (
            f"a {_MAX_BYTES + 10_000:,}-byte upload with max_bytes={_MAX_BYTES:,}",
            "POST",
            "/predict",
            {"file": bytes(_MAX_BYTES + 10_000)},
            {413},
            "set app.config['MAX_CONTENT_LENGTH'] = max_bytes, and answer Flask's 413 with "
            "JSON: @app.errorhandler(413).",
        ),
        ("?top_k=0", "POST", "/predict?top_k=0", {"file": png}, {400}, _TOP_K_HINT),
        ("?top_k=11", "POST", "/predict?top_k=11", {"file": png}, {400}, _TOP_K_HINT),
        ("?top_k=abc", "POST", "/predict?top_k=abc", {"file": png}, {400}, _TOP_K_HINT),
        ("?top_k=-2", "POST", "/predict?top_k=-2", {"file": png}, {400}, _TOP_K_HINT),
        (
            "?top_k=² (a Unicode digit)",
            "POST",
            "/predict?top_k=²",
            {"file": png},
            {400},
            _UNICODE_DIGIT_HINT,
        ),
        (
            "?top_k= of 5,000 digits",
            "POST",
            "/predict?top_k=" + "9" * 5000,
            {"file": png},
            {400},
            _UNICODE_DIGIT_HINT,
        ),
        (
            "an URL-encoded body of 2,000 fields (not multipart)",
            "POST",
            "/predict",
            "&".join(f"{_SECRET}{i}=" for i in range(2000)).encode(),
            {400, 415},
            _FORM_HINT,
        ),
        (
            "GET /predict (wrong method)",
            "GET",
            "/predict",
            None,
            {405},
            "answer Flask's own errors (404, 405, …) with JSON too: "
            "@app.errorhandler(HTTPException) returning {'error', 'message'} and err.code.",
        ),
    ]


def _send(app: Any, method: str, url: str, form: dict[str, bytes] | bytes | None) -> Any:
    if isinstance(form, bytes):
        return app.test_client().open(
            url, method=method, data=form, content_type="application/x-www-form-urlencoded"
        )
    data = None if form is None else {k: (io.BytesIO(v), "upload") for k, v in form.items()}
    return app.test_client().open(url, method=method, data=data)


def check_flask_app(make_app: Callable[..., Any]) -> None:
    """Exercise 9.3: ``make_app(model, max_bytes=...)`` builds a Flask app with ``POST /predict``.

    Checked through ``app.test_client()``: a 28×28 PNG (default ``top_k`` 3, and ``?top_k=5``) must
    give exactly the API's probabilities, a 97×61 JPEG with ``?top_k=10`` the same within 0.02
    (own preprocessing may differ by a grey level); a missing ``file`` field, a CSV, a truncated
    PNG, a body over ``max_bytes``, six bad ``top_k`` values (``²`` and 5,000 digits among them),
    an URL-encoded body (whose field names must not be echoed) and ``GET /predict`` must each get
    a 4xx JSON ``{"error", …}`` (400, 400/415, 400, 413, 400, 400/415, 405), never a 5xx. The
    model (dropout,
    handed over in training mode) must run in eval mode without gradients, and a second
    ``make_app`` must give a second working app (a factory). ``create_app`` and
    ``predict_response`` are switched off meanwhile.

    Raises:
        AssertionError: the failing request, the answer it got, and a hint.
    """
    from flask import Flask

    ex = "9.3"
    good, bad = _preprocess_cases()
    png, jpeg, csv, truncated = good[0][1], good[1][1], bad[1][1], bad[3][1]
    model, calls = _recording_model(3)
    model.eval()
    with torch.inference_mode():
        references = {
            image: torch.softmax(model(serve.preprocess_image(image)), dim=1)[0]
            for image in (png, jpeg)
        }
    model.train()
    shortcuts = _RESPONSE_SHORTCUTS + aliases([make_app], _RESPONSE_SHORTCUTS)
    with refuse(ex, shortcuts, task="the /predict route"):
        app = call(
            ex,
            f"make_app(model, max_bytes={_MAX_BYTES})",
            make_app,
            model,
            max_bytes=_MAX_BYTES,
            hint="make_app(model, max_bytes=...) builds app = Flask(__name__), registers the "
            "route and the error handlers, and returns app.",
        )
        if not isinstance(app, Flask):
            raise failure(
                ex, f"make_app returned {type(app).__name__}, not a Flask app", "return app."
            )
        requests = [
            ("a 28×28 PNG", "/predict", png, 3, 1e-5),
            ("a 28×28 PNG with ?top_k=5", "/predict?top_k=5", png, 5, 1e-5),
            ("a 97×61 RGB JPEG with ?top_k=10", "/predict?top_k=10", jpeg, 10, 0.02),
        ]
        with _quiet(app):
            for name, url, image, k, tol in requests:
                calls.clear()
                response = _answer(ex, app, name, "POST", url, {"file": image})
                _check_good(ex, name, response, references[image], k, tol, calls)
            for name, method, url, form, allowed, hint in _bad_requests(png, csv, truncated):
                response = _answer(ex, app, name, method, url, form)
                _check_bad(ex, name, response, allowed, hint)
        try:
            second = make_app(model, max_bytes=_MAX_BYTES)
            with _quiet(second):
                status = _send(second, "POST", "/predict", {"file": png}).status_code
        except (NotImplementedError, ShortcutRefused):
            raise
        except Exception as err:
            raise failure(
                ex,
                f"a second make_app(model) failed ({type(err).__name__}: {err})",
                "create the app inside make_app (app = Flask(__name__) in its body), so that each "
                "call builds a fresh app with its own routes.",
            ) from err
        if status != 200:
            raise failure(
                ex,
                f"the app from a second make_app(model) answered a good PNG with {status}",
                "create the app inside make_app, not once at module level.",
            )
    n_bad = len(_bad_requests(png, csv, truncated))
    passed(
        ex,
        "make_app's /predict answers a PNG, a PNG with top_k=5 and a JPEG with the API's "
        f"probabilities (eval mode, no gradients), and {n_bad} bad requests (no file field, "
        "CSV, truncated, too large, bad top_k, an URL-encoded body, GET) with 4xx JSON",
    )


@contextmanager
def _quiet(app: Any) -> Iterator[None]:
    """Silence the app's logger: an unhandled error would print a traceback in the check."""
    disabled = app.logger.disabled
    app.logger.disabled = True
    try:
        yield
    finally:
        app.logger.disabled = disabled


def _answer(
    ex: str, app: Any, name: str, method: str, url: str, form: dict[str, bytes] | None
) -> Any:
    try:
        return _send(app, method, url, form)
    except (NotImplementedError, ShortcutRefused):
        raise
    except Exception as err:
        raise failure(
            ex,
            f"{method} {url} with {name}: the app raised {type(err).__name__}: {err} (a client "
            "would get a 500)",
            "catch what the request can cause (a missing field, a bad top_k, a bad image) "
            "and answer it with a 4xx JSON error; leave app.testing off.",
        ) from err


def _json_of(response: Any) -> Any:
    return response.get_json(silent=True) if response.is_json else None


def _check_good(
    ex: str,
    name: str,
    response: Any,
    probs: torch.Tensor,
    k: int,
    tol: float,
    calls: list[tuple[bool, bool, int]],
) -> None:
    body = _json_of(response)
    if response.status_code != 200:
        shown = body if body is not None else response.get_data(as_text=True)[:120]
        raise failure(
            ex,
            f"{name}: status {response.status_code} ({shown}), expected 200",
            "read the upload with request.files['file'].read(), preprocess it (your "
            "preprocess_upload or serve.preprocess_image), run the model, jsonify the answer.",
        )
    if not calls:
        raise failure(ex, f"{name}: the model was never called", "run model(x) in the route.")
    if any(training for training, _, _ in calls):
        raise failure(
            ex,
            f"{name}: the model ran in training mode",
            "call model.eval() in make_app (once): dropout makes training-mode answers random.",
        )
    if any(grad for _, grad, _ in calls):
        raise failure(
            ex,
            f"{name}: the forward pass recorded gradients",
            "run it under `with torch.inference_mode():`.",
        )
    values, indices = probs.topk(k)
    best = int(indices[0])
    expected = {
        "label": CLASSES[best],
        "class_index": best,
        "probabilities": [
            {"label": CLASSES[int(i)], "class_index": int(i), "probability": float(p)}
            for p, i in zip(values, indices, strict=True)
        ],
    }
    problem = _body_problem(body, expected, k, tol) if tol <= 1e-5 else _loose(body, probs, k, tol)
    if problem is not None:
        raise failure(
            ex,
            f"{name}: {problem}",
            "answer {'label', 'class_index', 'probabilities': [{'label', 'class_index', "
            "'probability'}, …]}: softmax over dim 1, the top_k largest first, plain floats.",
        )


def _loose(body: Any, probs: torch.Tensor, k: int, tol: float) -> str | None:
    """``_body_problem`` for an image the learner may preprocess a grey level differently."""
    best = int(probs.argmax())
    reference = {
        "label": CLASSES[best],
        "class_index": best,
        "probabilities": [
            {"label": CLASSES[i], "class_index": i, "probability": float(probs[i])}
            for i in range(len(CLASSES))
        ],
    }
    if isinstance(body, dict) and isinstance(body.get("class_index"), int):
        top = body["class_index"]
        if float(probs[top]) >= float(probs.max()) - tol:  # a near-tie may flip
            reference["class_index"], reference["label"] = top, CLASSES[top]
    return _body_problem(body, reference, k, tol)


def _check_bad(ex: str, name: str, response: Any, allowed: set[int], hint: str) -> None:
    status = response.status_code
    body = _json_of(response)
    wanted = " or ".join(str(s) for s in sorted(allowed))
    if status >= 500:
        raise failure(
            ex,
            f"{name}: status {status}, expected {wanted}: a client error became a server error",
            hint,
        )
    if status not in allowed:
        raise failure(ex, f"{name}: status {status}, expected {wanted}", hint)
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        shown = response.get_data(as_text=True)[:80].replace("\n", " ")
        raise failure(
            ex,
            f"{name}: status {status} with the body {shown!r}, not JSON with an 'error' key",
            "answer every error with jsonify(error=..., message=...), status. " + hint,
        )
    echoed = response.get_data(as_text=True).count(_SECRET)
    if echoed:
        raise failure(
            ex,
            f"{name}: the answer ({len(response.get_data()):,} bytes) echoes {echoed} of the "
            "body's field names back",
            hint,
        )
