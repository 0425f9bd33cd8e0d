"""Check of exercise 9.3: the Flask ``/predict`` route, driven through ``app.test_client()``."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from serving import inference, upload

from ..data import CLASSES
from ._common import ShortcutRefused, aliases, call, failure, passed, refuse
from .ch09 import (
    _RESPONSE_SHORTCUTS,
    _body_problem,
    _check_calls,
    _preprocess_cases,
    _recording_model,
)

__all__ = ["check_flask_app"]

_MAX_BYTES = 50_000
_SECRET = "secret-field"  # the URL-encoded body's field names, never to be echoed back
_TOP_K = "validate top_k before using it: accept only '1' … '10', else answer 400 (JSON)."
_DIGIT = "str.isdigit() is True for '²', and int('²') raises, as int() of 5,000 digits does. "
_DIGIT += _TOP_K
_IMAGE = "catch the preprocessing error (a ValueError) and answer a 4xx JSON error."
_ANSWER = (
    "answer {'label', 'class_index', 'probabilities': [{'label', 'class_index', "
    "'probability'}, …]}: softmax over dim 1, the top_k largest first, plain floats."
)
Form = dict[str, bytes] | bytes | None  # a multipart form, an URL-encoded body, or no body


def _bad_requests(png: bytes, csv: bytes, cut: bytes) -> list[tuple[str, str, Form, set[int], str]]:
    """``(name, method + URL, form, allowed statuses, hint)`` of the requests to refuse."""
    top_k = [(f"?top_k={k}", f"POST /predict?top_k={k}", {"file": png}, {400}, _TOP_K)
             for k in ("0", "11", "abc", "-2")]  # fmt: skip
    return [
        ("an upload in a field named 'image', not 'file'", "POST /predict", {"image": png}, {400},
         "request.files.get('file') is None when the field is missing: answer 400 with a JSON "
         "error that says which field to send."),
        ("a CSV file, not an image", "POST /predict", {"file": csv}, {400, 415}, _IMAGE),
        ("a truncated PNG", "POST /predict", {"file": cut}, {400}, _IMAGE),
        (f"a {_MAX_BYTES + 10_000:,}-byte upload with max_bytes={_MAX_BYTES:,}", "POST /predict",
         {"file": bytes(_MAX_BYTES + 10_000)}, {413}, "set app.config['MAX_CONTENT_LENGTH'] = "
         "max_bytes, and answer Flask's 413 with JSON: @app.errorhandler(413)."),
        *top_k,
        ("?top_k=² (a Unicode digit)", "POST /predict?top_k=²", {"file": png}, {400}, _DIGIT),
        ("?top_k= of 5,000 digits", "POST /predict?top_k=" + "9" * 5000, {"file": png}, {400},
         _DIGIT),
        ("an URL-encoded body of 2,000 fields (not multipart)", "POST /predict",
         "&".join(f"{_SECRET}{i}=" for i in range(2000)).encode(), {400, 415},
         "a body that is not multipart/form-data has no 'file': answer 400 or 415 with a short "
         "JSON message, and never echo the body's fields back (200,000 would make 2 MB)."),
        ("GET /predict (wrong method)", "GET /predict", None, {405}, "answer Flask's own errors "
         "(404, 405, …) with JSON too: @app.errorhandler(HTTPException) returning {'error', "
         "'message'} and err.code."),
    ]  # fmt: skip


def _send(ex: str, app: Any, name: str, request: str, form: Form) -> Any:
    """The app's answer to ``request`` (``"POST /url"``); an exception that escapes is a ❌."""
    method, url = request.split(" ", 1)
    kind = "application/x-www-form-urlencoded" if isinstance(form, bytes) else None
    if isinstance(form, dict):
        form = {k: (io.BytesIO(v), "upload") for k, v in form.items()}
    try:
        return app.test_client().open(url, method=method, data=form, content_type=kind)
    except (NotImplementedError, ShortcutRefused):
        raise
    except Exception as err:
        problem = f"{request} with {name}: the app raised {type(err).__name__}: {err} (a 500)"
        hint = "answer what a request can cause with a 4xx JSON error; leave app.testing off."
        raise failure(ex, problem, hint) from err


def check_flask_app(make_app: Callable[..., Any]) -> None:
    """Exercise 9.3: ``make_app(model, max_bytes=...)`` builds a Flask app whose ``POST
    /predict`` answers a PNG (``top_k`` 3 and 5) with the API's probabilities and a JPEG
    (``top_k=10``) nearly so, in eval mode without gradients, and answers twelve bad requests
    with 4xx JSON, never a 5xx or an echo of the body; a second call gives a second working app.
    ``create_app`` and ``predict_response`` are switched off meanwhile."""
    from flask import Flask

    ex = "9.3"
    good, bad = _preprocess_cases()
    png, jpeg = good[0][1], good[1][1]
    model, calls = _recording_model(3)
    model.eval()
    reference = {
        image: inference.predict_response(model, upload.preprocess_image(image), 10)
        for image in (png, jpeg)
    }
    model.train()
    requests = _bad_requests(png, bad[1][1], bad[3][1])
    shortcuts = _RESPONSE_SHORTCUTS + aliases([make_app], _RESPONSE_SHORTCUTS)
    with refuse(ex, shortcuts, task="the /predict route"):
        hint = "build app = Flask(__name__), register the route and error handlers, return app."
        app = call(ex, f"make_app(model, max_bytes={_MAX_BYTES})", make_app, model,
                   max_bytes=_MAX_BYTES, hint=hint)  # fmt: skip
        if not isinstance(app, Flask):
            raise failure(ex, f"make_app returned {type(app).__name__}, not a Flask app", hint)
        try:
            second = make_app(model, max_bytes=_MAX_BYTES)
        except (NotImplementedError, ShortcutRefused):
            raise
        except Exception as err:
            problem = f"a second make_app(model) failed ({type(err).__name__}: {err})"
            hint = "create the app inside make_app (app = Flask(__name__) in its body), so that "
            raise failure(ex, problem, hint + "each call builds a fresh app.") from err
        logger, was = app.logger, app.logger.disabled
        logger.disabled = True  # an unhandled error would print a traceback in the check
        try:
            for name, url, image, k, tol in [
                ("a 28×28 PNG", "/predict", png, 3, 1e-5),
                ("a 28×28 PNG with ?top_k=5", "/predict?top_k=5", png, 5, 1e-5),
                ("a 97×61 RGB JPEG with ?top_k=10", "/predict?top_k=10", jpeg, 10, 0.02),
            ]:
                calls.clear()
                response = _send(ex, app, name, f"POST {url}", {"file": image})
                body, full = response.get_json(silent=True), reference[image]
                if response.status_code != 200:
                    problem = f"{name}: status {response.status_code} ({body}), expected 200"
                    raise failure(ex, problem, "preprocess the upload, run the model, jsonify.")
                _check_calls(ex, f"{name}: ", calls)
                probs = {p["class_index"]: p["probability"] for p in full["probabilities"]}
                top = body.get("class_index") if isinstance(body, dict) else None
                if tol > 1e-5 and top in probs and probs[top] >= max(probs.values()) - tol:
                    full = dict(full, class_index=top, label=CLASSES[top])  # a near-tie flips
                full = dict(full, probabilities=full["probabilities"][:k])
                if problem := _body_problem(body, full, k, tol):
                    raise failure(ex, f"{name}: {problem}", _ANSWER)
            for name, request, form, allowed, hint in requests:
                _check_bad(ex, name, _send(ex, app, name, request, form), allowed, hint)
            status = _send(ex, second, "a PNG", "POST /predict", {"file": png}).status_code
        finally:
            logger.disabled = was
        if status != 200:
            problem = f"the app from a second make_app(model) answered a good PNG with {status}"
            raise failure(ex, problem, "create the app inside make_app, not at module level.")
    passed(
        ex,
        "make_app's /predict answers a PNG, a PNG with top_k=5 and a JPEG with the API's "
        f"probabilities (eval mode, no gradients), and {len(requests)} bad requests (no file "
        "field, CSV, truncated, too large, bad top_k, an URL-encoded body, GET) with 4xx JSON",
    )


def _check_bad(ex: str, name: str, response: Any, allowed: set[int], hint: str) -> None:
    """A ❌ unless a status in ``allowed`` answers with a JSON error that echoes nothing."""
    status, body = response.status_code, response.get_json(silent=True)
    wanted = " or ".join(map(str, sorted(allowed)))
    if status not in allowed:
        server = ": a client error became a server error" if status >= 500 else ""
        raise failure(ex, f"{name}: status {status}, expected {wanted}{server}", hint)
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        shown = response.get_data(as_text=True)[:80].replace("\n", " ")
        hint = "answer every error with jsonify(error=..., message=...), status. " + hint
        raise failure(ex, f"{name}: status {status} with the body {shown!r}, not JSON", hint)
    if echoed := response.get_data(as_text=True).count(_SECRET):
        problem = f"{name}: the answer echoes {echoed} of the body's field names back"
        raise failure(ex, problem, hint)
