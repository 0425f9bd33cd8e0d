"""Serving the exported model: the Flask app factory, a background server and the command line.

The server loads **the file chapter 8 exported**, not the course's Python class:

- ``.onnx``: run by ONNX Runtime. This path imports neither torch nor ``course_utils.models``,
  so it runs from the small dependency set in ``requirements-serve.txt`` (Flask, waitress,
  NumPy, Pillow, ONNX Runtime);
- ``.pt2``: a ``torch.export`` program (torch is imported only then);
- ``.pt``: a state_dict checkpoint, which needs the model's class (``FashionCNN``) to load: the
  coupling that exporting removes. It is kept as the baseline of the load benchmark.

Every model file must have its SHA-256 sidecar (``<file>.sha256``, written by chapter 8's save
functions and by ``save_checkpoint``) and match it; otherwise the server refuses to start (exit
status 2), with a message that says why. So does a port that is already taken.

Loading the model file and building the answer live in :mod:`serving.inference`, the form's
limits in :mod:`serving.form_limits`, the upload preprocessing in :mod:`serving.upload`
(NumPy and Pillow only): import each name from the module that defines it. The load benchmark,
which starts this server in a subprocess, is :mod:`serving.loadtest` (``python -m
serving.loadtest``).

The API (:func:`create_app`): ``POST /predict`` with a ``multipart/form-data`` field ``file``
returns ``{"label", "class_index", "probabilities": [{"label", "class_index", "probability"},
…]}`` (the top ``k``, ``?top_k=`` from 1 to 10, default 3); ``GET /health`` says which model is
loaded. Every bad request that reaches the app gets a JSON ``{"error", "message"}`` with a 4xx
status, never a traceback, and never an echo of the request's body; waitress answers four kinds
itself, in plain text, before the app sees them (see :func:`make_server`). Chapter 9 writes the
same routes and error handlers in the notebook and checks that both apps answer alike.

Command line (``python -m serving.serve``):

- ``serve --model FILE [--host 127.0.0.1] [--port 8000]``: run the API under waitress. The host
  defaults to ``127.0.0.1``, this machine only. ``--host 0.0.0.0`` exposes it to every network
  the machine is on, with no authentication and no TLS: do that only behind a reverse proxy
  that adds them, or on a network you trust.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import re
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from course_utils.artefacts import ModelFileError
from course_utils.fashion_mnist import CLASSES

from .form_limits import MAX_FIELD_BYTES, MAX_FORM_PARTS, FormLimitExceeded, UploadRequest
from .inference import load_model, response_from_logits
from .upload import (
    DEFAULT_MAX_DECODE_BYTES,
    DEFAULT_MAX_PIXELS,
    MemoryBudget,
    PreprocessError,
    preprocess_array,
)

__all__ = [
    "CONNECTION_LIMIT",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MEMORY_BUDGET",
    "DEFAULT_THREADS",
    "IDLE_TIMEOUT_S",
    "TOP_K",
    "ServerThread",
    "create_app",
    "main",
    "make_server",
    "serve_in_background",
]

DEFAULT_MAX_BYTES = 8 * 1024 * 1024  # 8 MiB: a 12-megapixel phone JPEG fits, a video does not
DEFAULT_MEMORY_BUDGET = 256 * 2**20  # what all requests' decodes may hold at once
# waitress worker threads. Each request is a few milliseconds of mostly GIL-bound Python, so more
# threads than this only queue for the GIL: on the 2-core machine of chapter 9, 8 clients got a
# p99 of 18 ms with 2 threads against 27 ms with 8 (the medians of three runs each). Slow
# clients do not tie up a thread: waitress buffers each request body before a thread takes it.
DEFAULT_THREADS = 2
# waitress's connection settings. Its defaults (100 connections, 120 s) let 100 clients that open
# a connection and send nothing lock every other client out for two minutes. Open connections
# cost a socket and a little memory each, not a thread, so allow many; a connection that sends
# nothing for IDLE_TIMEOUT_S is closed (a slow upload that keeps sending is not cut, nor a
# request the app is working on). Past the limit, new clients wait in the kernel's backlog.
CONNECTION_LIMIT = 1000
IDLE_TIMEOUT_S = 15
TOP_K = re.compile(r"[0-9]{1,2}")  # ASCII digits only: str.isdigit() is True for '²' too


# --- the API --------------------------------------------------------------------------------------


def _error(status: int, error: str, message: str) -> tuple[Any, int]:
    """A JSON error body ``{"error", "message"}`` with its status."""
    return jsonify(error=error, message=message), status


def _shown(text: str, limit: int = 20) -> str:
    """``text`` quoted for a message, cut to ``limit`` characters (never echo a long input)."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


def create_app(
    model_path: str | Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    default_top_k: int = 3,
    threads: int = 1,
) -> Flask:
    """A Flask app that serves the model file at ``model_path`` (``.onnx``, ``.pt2`` or ``.pt``).

    The routes and error handlers are the ones chapter 9 writes in the notebook, in a factory:
    each call builds a fresh app with its own model and limits, and nothing is loaded at import
    time. The model is loaded and verified once, here; every request reuses it.

    Args:
        model_path: the exported model (see :func:`load_model`).
        max_bytes: the largest request body (Flask's ``MAX_CONTENT_LENGTH``; larger → 413). Give
            waitress the same limit (:func:`make_server` does).
        max_pixels: the largest image, width × height (larger → 413).
        max_decode_bytes: the most memory one upload may take to decode (more → 413).
        memory_budget: the bytes all concurrent decodes may hold together; a request waits for
            its share (and gets a 503 if it waits too long).
        default_top_k: how many classes ``/predict`` returns without ``?top_k=``.
        threads: the model's intra-op threads.

    Raises:
        ModelFileError: the model file is missing, damaged or unverifiable (at start-up, not at
            the first request).
    """
    model = load_model(model_path, threads)
    budget = MemoryBudget(memory_budget)
    app = Flask(__name__)
    app.request_class = UploadRequest  # accurate 413 messages for the form's limits
    app.config["MAX_CONTENT_LENGTH"] = max_bytes
    app.config["MAX_FORM_PARTS"] = MAX_FORM_PARTS
    app.config["MAX_FORM_MEMORY_SIZE"] = MAX_FIELD_BYTES
    app.json.sort_keys = False  # keep the probabilities' order (and label first) in the JSON
    app.extensions["course_model"] = model
    app.extensions["course_memory_budget"] = budget

    @app.get("/health")
    def health() -> Any:
        return jsonify(status="ok", model=Path(model_path).name, classes=list(CLASSES))

    @app.post("/predict")
    def predict() -> Any:
        raw_k = request.args.get("top_k", str(default_top_k))
        if not TOP_K.fullmatch(raw_k) or not 1 <= int(raw_k) <= len(CLASSES):
            message = f"top_k must be a whole number from 1 to {len(CLASSES)}, got {_shown(raw_k)}"
            return _error(400, "bad parameter", message)
        if request.mimetype != "multipart/form-data":  # checked before the body is parsed
            message = (
                "send the image as multipart/form-data in a field named 'file' (got "
                f"Content-Type {_shown(request.mimetype or 'none', 40)})"
            )
            return _error(415, "unsupported media type", message)
        upload = request.files.get("file")  # parses the body: over a limit → 413 here
        if upload is None:
            fields = sorted(set(request.files) | set(request.form))
            shown = ", ".join(_shown(name) for name in fields[:3]) + (", …" * (len(fields) > 3))
            message = (
                "send the image as multipart/form-data in a field named 'file' "
                f"(fields received: {shown or 'none'})"
            )
            return _error(400, "no file", message)
        try:
            x = preprocess_array(
                upload.read(),
                max_pixels=max_pixels,
                max_decode_bytes=max_decode_bytes,
                budget=budget,
            )
        except PreprocessError as err:
            return _error(err.status, err.error, str(err))
        return jsonify(response_from_logits(model(x)[0], int(raw_k)))

    @app.errorhandler(413)
    def too_large(err: HTTPException) -> Any:
        if isinstance(err, FormLimitExceeded):  # too many parts, or a long text field
            message = err.description
        else:
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


# --- a real server --------------------------------------------------------------------------------


def make_server(
    app: Flask,
    host: str = "127.0.0.1",
    port: int = 0,
    threads: int = DEFAULT_THREADS,
    **options: Any,
) -> Any:
    """A waitress server for ``app`` whose body limit is the app's own ``MAX_CONTENT_LENGTH``.

    waitress reads a whole request body before the app sees it; with the same limit it refuses
    a larger body from its ``Content-Length`` header alone, before buffering any of it. It also
    sets :data:`CONNECTION_LIMIT` and :data:`IDLE_TIMEOUT_S`; ``options`` override any waitress
    setting. waitress, not the app, answers four kinds of bad request, in ``text/plain``: 400 (a
    malformed request line, header or chunked body), 413 (a body over the limit), 431 (headers
    over 256 KiB) and 501 (a ``Transfer-Encoding`` other than chunked).
    """
    from waitress import create_server

    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "Task queue depth is 1"
    settings = {
        "connection_limit": CONNECTION_LIMIT,
        "channel_timeout": IDLE_TIMEOUT_S,
        "cleanup_interval": IDLE_TIMEOUT_S / 3,  # how often idle connections are looked for
        # waitress refuses a body of this many bytes or more, as werkzeug does behind it
        "max_request_body_size": app.config["MAX_CONTENT_LENGTH"],
        **options,
    }
    return create_server(app, host=host, port=port, threads=threads, **settings)


class ServerThread:
    """A waitress server for ``app`` on ``127.0.0.1`` and a free port, run in a daemon thread.

    In a script, prefer :func:`serve_in_background` (a context manager, so the server always
    stops); in a notebook, where the server must outlive one cell, call :meth:`start` and
    :meth:`stop` yourself.
    """

    def __init__(self, app: Flask, threads: int = DEFAULT_THREADS, **options: Any) -> None:
        self.server = make_server(app, threads=threads, **options)
        self.port: int = self.server.effective_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.run, name="waitress", daemon=True)

    def start(self) -> ServerThread:
        """Start serving."""
        self.thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the workers (each finishes its request first), then close every connection from
        the server's own loop and join the thread. In the other order a worker that finishes
        after the close finds the loop's trigger closed, and waitress logs the OSError."""
        from waitress import wasyncore

        def close_all() -> None:
            wasyncore.close_all(self.server._map)

        self.server.task_dispatcher.shutdown(timeout=timeout)
        try:
            self.server.trigger.pull_trigger(close_all)
        except OSError:  # the loop already closed its trigger: it has stopped by itself
            wasyncore.close_all(self.server._map)
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise RuntimeError(f"the server thread did not stop within {timeout} s")


@contextmanager
def serve_in_background(
    model_path: str | Path, threads: int = DEFAULT_THREADS, **app_kw: Any
) -> Iterator[str]:
    """Serve :func:`create_app` under waitress in a thread; yields the base URL, stops on exit."""
    server = ServerThread(create_app(model_path, **app_kw), threads=threads).start()
    try:
        yield server.url
    finally:
        server.stop()


def _return_large_buffers_to_the_os() -> None:
    """On glibc (Linux), serve every allocation of 1 MiB or more with its own ``mmap``.

    glibc raises its ``mmap`` threshold each time a large block is freed (up to 32 MiB), after
    which decoded images come from per-thread heaps that keep the memory once freed: with
    eight worker threads the server's resident memory then grows to several times what the
    :class:`MemoryBudget` allows at once. A fixed threshold hands each freed image back.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, …): nothing to tune
        return
    m_mmap_threshold = -3  # from <malloc.h>
    libc.mallopt(m_mmap_threshold, 1 << 20)


def _serve(args: argparse.Namespace) -> int:
    _return_large_buffers_to_the_os()
    if args.model.suffix in (".pt2", ".pt"):
        import torch

        torch.set_num_threads(args.model_threads)  # batch-1 requests: more only oversubscribe
    try:
        app = create_app(args.model, threads=args.model_threads)
    except ModelFileError as err:
        print(f"error: not serving: {err}", file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: listening on {args.host}: any machine that can reach it may call the API "
            "(no authentication, no TLS); put a reverse proxy in front of it",
            file=sys.stderr,
        )
    host = f"[{args.host}]" if ":" in args.host else args.host
    try:
        server = make_server(app, host=args.host, port=args.port, threads=args.threads)
    except OSError as err:  # the port is taken, the address is not this machine's, …
        print(
            f"error: not serving: cannot listen on {host}:{args.port} ({err.strerror or err}); "
            "stop the program using it or pick another port with --port",
            file=sys.stderr,
        )
        return 2
    print(f"listening on http://{host}:{server.effective_port}", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM too → KeyboardInterrupt
    try:
        with suppress(KeyboardInterrupt):
            server.run()  # waitress closes cleanly on KeyboardInterrupt
    finally:
        server.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``serve``); the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m serving.serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="run the API under waitress")
    run.add_argument(
        "--model", type=Path, required=True, help="the exported model: .onnx or .pt2 (or a .pt)"
    )
    run.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on (default 127.0.0.1: this machine only). WARNING: 0.0.0.0 "
        "exposes the API to every network this machine is on, without authentication or TLS",
    )
    run.add_argument("--port", type=int, default=8000, help="0 picks a free port (default 8000)")
    run.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="waitress worker threads")
    run.add_argument("--model-threads", type=int, default=1, help="the model's intra-op threads")
    args = parser.parse_args(argv)
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
