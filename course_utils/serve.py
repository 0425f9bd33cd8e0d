"""Serving the chapter-1 model: the Flask app factory, a background server and the command line.

The upload preprocessing lives in :mod:`course_utils.upload` and the load benchmark in
:mod:`course_utils.loadtest`; both are re-exported here, so ``serve.preprocess_image`` and
``serve.bench_sweep`` work as before.

The API (:func:`create_app`): ``POST /predict`` with a multipart field ``file`` returns
``{"label", "class_index", "probabilities": [{"label", "class_index", "probability"}, …]}`` (the
top ``k``, ``?top_k=`` from 1 to 10, default 3); ``GET /health`` says the model is loaded. Every
bad request gets a JSON ``{"error", "message"}`` with a 4xx status, never a traceback. Chapter 9
writes the same routes and error handlers in the notebook and checks that both apps answer alike.

Command line (``python -m course_utils.serve``):

- ``serve --model PATH [--port N]``: run the API under waitress on 127.0.0.1;
- ``bench [--model PATH] [--requests 2000] [--concurrency 8]``: start the API under waitress in a
  subprocess on a free loopback port, send the requests, print p50/p99 latency, throughput and the
  number of errors, and stop the server (:func:`bench_sweep` does it for several concurrencies
  against one server).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from flask import Flask, jsonify, request
from torch import nn
from werkzeug.exceptions import HTTPException

from .data import CLASSES
from .loadtest import BenchResult, bench, bench_sweep
from .train import load_checkpoint
from .upload import (
    DEFAULT_MAX_PIXELS,
    FORMATS,
    ImageTooLarge,
    InvalidImage,
    PreprocessError,
    UnsupportedImage,
    catalogue_photo,
    crop_to_content,
    decode_image,
    encode_png,
    fit_to_square,
    needs_inversion,
    normalise,
    preprocess_image,
    stretch_contrast,
    to_grey,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "FORMATS",
    "WAITRESS_MAX_BODY",
    "BenchResult",
    "ImageTooLarge",
    "InvalidImage",
    "PreprocessError",
    "ServerThread",
    "UnsupportedImage",
    "bench",
    "bench_sweep",
    "catalogue_photo",
    "create_app",
    "crop_to_content",
    "decode_image",
    "encode_png",
    "fit_to_square",
    "needs_inversion",
    "normalise",
    "predict_response",
    "preprocess_image",
    "serve_in_background",
    "stretch_contrast",
    "to_grey",
]

DEFAULT_MAX_BYTES = 8 * 1024 * 1024  # 8 MiB: a 12-megapixel phone JPEG fits, a video does not
# waitress buffers a whole request body before Flask sees it; past this it refuses the request
# itself (a plain-text 413). Below it, Flask's MAX_CONTENT_LENGTH answers with a JSON 413.
WAITRESS_MAX_BODY = 8 * DEFAULT_MAX_BYTES


# --- the API --------------------------------------------------------------------------------------


def predict_response(model: nn.Module, x: torch.Tensor, top_k: int = 3) -> dict[str, Any]:
    """The ``/predict`` JSON body for one input ``x`` of shape ``[1, 1, 28, 28]``.

    Runs under ``torch.inference_mode()``; the probabilities are the softmax of the logits, the
    ``top_k`` largest first, as plain Python floats and ints (JSON-serialisable).
    """
    with torch.inference_mode():
        probs = torch.softmax(model(x), dim=1)[0]
    values, indices = probs.topk(top_k)
    best = int(indices[0])
    return {
        "label": CLASSES[best],
        "class_index": best,
        "probabilities": [
            {"label": CLASSES[int(i)], "class_index": int(i), "probability": float(p)}
            for p, i in zip(values, indices, strict=True)
        ],
    }


def _error(status: int, error: str, message: str) -> tuple[Any, int]:
    """A JSON error body ``{"error", "message"}`` with its status."""
    return jsonify(error=error, message=message), status


def create_app(
    model_path: str | Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    default_top_k: int = 3,
) -> Flask:
    """A Flask app that serves the checkpoint at ``model_path`` (made by ``save_checkpoint``).

    The routes and error handlers are the ones chapter 9 writes in the notebook, in a factory:
    each call builds a fresh app with its own model and limits, and nothing is loaded at import
    time. The model is loaded once, here, on the CPU in eval mode; every request reuses it.

    Args:
        model_path: the ``.pt`` checkpoint.
        max_bytes: the largest request body (Flask's ``MAX_CONTENT_LENGTH``; larger → 413).
        max_pixels: the largest image, width × height (larger → 413).
        default_top_k: how many classes ``/predict`` returns without ``?top_k=``.

    Raises:
        course_utils.train.CheckpointError: the checkpoint is missing or unreadable (at start-up,
            not at the first request).
    """
    model, _ = load_checkpoint(model_path, map_location="cpu")
    model.eval()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_bytes
    app.json.sort_keys = False  # keep the probabilities' order (and label first) in the JSON
    app.extensions["course_model"] = model

    @app.get("/health")
    def health() -> Any:
        return jsonify(status="ok", model=Path(model_path).name, classes=list(CLASSES))

    @app.post("/predict")
    def predict() -> Any:
        raw_k = request.args.get("top_k", str(default_top_k))
        if not raw_k.isdigit() or not 1 <= int(raw_k) <= len(CLASSES):
            return _error(400, "bad parameter", f"top_k must be 1 to {len(CLASSES)}, got {raw_k!r}")
        upload = request.files.get("file")  # reading the body: over max_bytes raises 413 here
        if upload is None:
            fields = sorted(set(request.files) | set(request.form))
            return _error(
                400,
                "no file",
                "send the image as multipart/form-data in a field named 'file' "
                f"(fields received: {fields or 'none'})",
            )
        try:
            x = preprocess_image(upload.read(), max_pixels=max_pixels)
        except PreprocessError as err:
            return _error(err.status, err.error, str(err))
        return jsonify(predict_response(model, x, int(raw_k)))

    @app.errorhandler(413)
    def too_large(err: HTTPException) -> Any:
        message = f"the upload is larger than the {max_bytes:,} bytes allowed"
        return _error(413, "request entity too large", message)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> Any:  # 400, 404, 405 … raised by Flask itself
        response, status = _error(err.code or 500, err.name.lower(), err.description or err.name)
        if err.code == 405 and err.valid_methods:
            response.headers["Allow"] = ", ".join(err.valid_methods)
        return response, status

    @app.errorhandler(Exception)
    def unexpected(err: Exception) -> Any:  # never a traceback to the client; logged server-side
        app.logger.exception("unhandled error")
        return _error(500, "internal server error", "the server failed; see its log")

    return app


# --- a real server in the background --------------------------------------------------------------


class ServerThread:
    """A waitress server for ``app`` on ``127.0.0.1`` and a free port, run in a daemon thread.

    In a script, prefer :func:`serve_in_background` (a context manager, so the server always
    stops); in a notebook, where the server must outlive one cell, call :meth:`start` and
    :meth:`stop` yourself.
    """

    def __init__(self, app: Flask, threads: int = 8) -> None:
        from waitress import create_server

        logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "Task queue depth is 1"
        self.server = create_server(
            app, host="127.0.0.1", port=0, threads=threads, max_request_body_size=WAITRESS_MAX_BODY
        )
        self.port: int = self.server.effective_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.run, name="waitress", daemon=True)

    def start(self) -> ServerThread:
        """Start serving."""
        self.thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close every connection from the server's own loop, stop the workers, join the thread."""
        from waitress import wasyncore

        def close_all() -> None:
            wasyncore.close_all(self.server._map)

        self.server.trigger.pull_trigger(close_all)
        self.thread.join(timeout)
        self.server.task_dispatcher.shutdown()
        if self.thread.is_alive():
            raise RuntimeError(f"the server thread did not stop within {timeout} s")


@contextmanager
def serve_in_background(model_path: str | Path, threads: int = 8, **app_kw: Any) -> Iterator[str]:
    """Serve :func:`create_app` under waitress in a thread; yields the base URL, stops on exit."""
    server = ServerThread(create_app(model_path, **app_kw), threads=threads).start()
    try:
        yield server.url
    finally:
        server.stop()


def _serve(model_path: Path, port: int, threads: int, torch_threads: int) -> None:
    from waitress import create_server

    torch.set_num_threads(torch_threads)  # batch-1 requests: intra-op threads only oversubscribe
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "Task queue depth is 1" …
    server = create_server(
        create_app(model_path),
        host="127.0.0.1",
        port=port,
        threads=threads,
        max_request_body_size=WAITRESS_MAX_BODY,
    )
    print(f"listening on http://127.0.0.1:{server.effective_port}", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM too → KeyboardInterrupt
    try:
        server.run()  # waitress closes cleanly on KeyboardInterrupt
    finally:
        server.close()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``serve`` or ``bench``); returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m course_utils.serve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="run the API under waitress on 127.0.0.1")
    run.add_argument("--model", type=Path, required=True, help="checkpoint (.pt)")
    run.add_argument("--port", type=int, default=8000, help="0 picks a free port (default 8000)")
    run.add_argument("--threads", type=int, default=8, help="waitress worker threads")
    run.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads")
    load = sub.add_parser("bench", help="load-test the API on a free loopback port")
    load.add_argument("--model", type=Path, default=None, help="default: chapter 1's checkpoint")
    load.add_argument("--requests", type=int, default=2000, help="timed requests (≤ 100,000)")
    load.add_argument("--concurrency", type=int, default=8, help="client threads (≤ 64)")
    load.add_argument("--threads", type=int, default=8, help="waitress worker threads")
    load.add_argument("--deadline", type=float, default=300.0, help="stop sending after (s)")
    load.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.command == "serve":
        with suppress(KeyboardInterrupt):
            _serve(args.model, args.port, args.threads, args.torch_threads)
        return 0
    result = bench(
        args.model,
        args.requests,
        args.concurrency,
        threads=args.threads,
        deadline_s=args.deadline,
    )
    if args.json:
        print(json.dumps({k: v for k, v in asdict(result).items() if k != "latencies_ms"}))
    else:
        print(result.summary())
    return 0 if result.errors == 0 and result.wrong == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
