"""The load benchmark of chapter 9: the API under waitress in a subprocess on a free loopback
port, requests from client threads, latency percentiles, throughput and errors.

``python -m course_utils.serve bench`` runs :func:`bench`; :func:`bench_sweep` measures several
concurrencies against one server.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data import MEAN, STD
from .paths import REPO_ROOT
from .train import load_checkpoint
from .upload import SIZE, encode_png

__all__ = [
    "BenchResult",
    "bench",
    "bench_sweep",
]


# --- the load benchmark ---------------------------------------------------------------------------


@dataclass
class BenchResult:
    """What :func:`bench` measured (latencies in milliseconds)."""

    requests: int
    concurrency: int
    errors: int
    wrong: int
    seconds: float
    throughput: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    latencies_ms: list[float]

    def summary(self) -> str:
        """One readable paragraph."""
        return (
            f"{self.requests:,} requests at concurrency {self.concurrency} in "
            f"{self.seconds:.1f} s: {self.throughput:,.0f} requests/s; "
            f"latency p50 {self.p50_ms:.1f} ms, "
            f"p90 {self.p90_ms:.1f} ms, p99 {self.p99_ms:.1f} ms, max {self.max_ms:.1f} ms; "
            f"{self.errors} errors, {self.wrong} wrong predictions"
        )


def _multipart(data: bytes, boundary: str = "course-utils-bench") -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with one field ``file``, and its Content-Type."""
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="image.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return (
        head + data + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


def _run_load(
    url: str,
    bodies: Sequence[bytes],
    expected: Sequence[int],
    n: int,
    concurrency: int,
    deadline_s: float,
) -> tuple[list[float], int, int, float]:
    """Send ``n`` POSTs (cycling over ``bodies``) from ``concurrency`` threads, one keep-alive
    connection each. Returns (latencies in ms, errors, wrong predictions, wall seconds).

    The client is the standard library's ``http.client`` with pre-built bodies: it costs far less
    CPU per request than ``requests``, so on a small machine it steals less from the server.
    """
    host, port = url.removeprefix("http://").split(":")
    forms = [_multipart(body) for body in bodies]
    local = threading.local()
    stop_at = time.monotonic() + deadline_s

    def one(i: int) -> tuple[float, bool, bool]:
        if time.monotonic() > stop_at:
            return math.nan, True, False
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection(host, int(port), timeout=10)
        body, content_type = forms[i % len(forms)]
        start = time.perf_counter()
        try:
            local.conn.request("POST", "/predict", body, {"Content-Type": content_type})
            response = local.conn.getresponse()
            payload = response.read()
            ok = response.status == 200
            wrong = ok and json.loads(payload)["class_index"] != expected[i % len(expected)]
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            local.conn.close()
            del local.conn
            ok, wrong = False, False
        return (time.perf_counter() - start) * 1000, not ok, wrong

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(n)))
    seconds = time.perf_counter() - start
    latencies = [ms for ms, _, _ in results if not math.isnan(ms)]
    return latencies, sum(e for _, e, _ in results), sum(w for *_, w in results), seconds


def _bench_images(n: int = 200) -> tuple[list[bytes], torch.Tensor]:
    """``n`` Fashion-MNIST test images as PNG bytes (random images if the data is missing)."""
    from .data import DataUnavailableError, load_tensors

    try:
        images = load_tensors()["test"].images[:n]
    except DataUnavailableError:
        images = torch.randint(0, 256, (n, SIZE, SIZE), dtype=torch.uint8)
    return [encode_png(img) for img in images], images


@contextmanager
def _server_process(model_path: Path, threads: int, timeout: float = 60) -> Iterator[str]:
    """``python -m course_utils.serve serve`` in a subprocess; yields its URL, stops it on exit."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "course_utils.serve", "serve", "--model", str(model_path)]
    proc = subprocess.Popen(
        [*cmd, "--port", "0", "--threads", str(threads)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO_ROOT,
    )
    try:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not line or not line[0].startswith("listening on "):
            raise RuntimeError(f"the server did not start within {timeout} s: {line!r}")
        yield line[0].split()[-1]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def bench(
    model_path: str | Path | None = None,
    n_requests: int = 2000,
    concurrency: int = 8,
    *,
    threads: int = 8,
    warmup: int = 50,
    deadline_s: float = 300.0,
) -> BenchResult:
    """Load-test the API: a waitress subprocess on a free loopback port, ``n_requests`` POSTs of
    28×28 test-image PNGs from ``concurrency`` client threads (after ``warmup`` untimed ones).

    Every response must be a 200 whose ``class_index`` equals the model's own prediction on the
    same image; anything else counts as an error (``errors``) or a wrong answer (``wrong``).
    Requests not sent within ``deadline_s`` count as errors. Without ``model_path`` it serves the
    chapter-1 checkpoint, or an untrained model (latency does not depend on the weights).
    """
    return bench_sweep(
        model_path, n_requests, [concurrency], threads=threads, warmup=warmup, deadline_s=deadline_s
    )[0]


def bench_sweep(
    model_path: str | Path | None = None,
    n_requests: int = 2000,
    concurrencies: Sequence[int] = (1, 2, 4, 8),
    *,
    threads: int = 8,
    warmup: int = 50,
    deadline_s: float = 300.0,
) -> list[BenchResult]:
    """:func:`bench` at each of ``concurrencies`` in turn, against one server process (started
    once), so the levels differ only in how many clients send at the same time.

    Returns:
        One :class:`BenchResult` per concurrency, in the order given.
    """
    from .baseline import BASELINE
    from .models import FashionCNN
    from .train import checkpoint_path, save_checkpoint

    levels = list(concurrencies)
    if not 1 <= n_requests <= 100_000 or not levels or not all(1 <= c <= 64 for c in levels):
        raise ValueError("n_requests must be 1…100,000 and each concurrency 1…64")
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        if model_path is None:
            found = [checkpoint_path(BASELINE), checkpoint_path(BASELINE, quick=True)]
            model_path = next((p for p in found if p.exists()), None)
            if model_path is None:
                torch.manual_seed(0)
                model_path = save_checkpoint(FashionCNN(), Path(scratch) / "untrained.pt")
        model, _ = load_checkpoint(model_path)
        bodies, images = _bench_images()
        with torch.inference_mode():
            x = images.unsqueeze(1).float().div(255).sub(MEAN).div(STD)
            expected = model.eval()(x).argmax(1).tolist()
        with _server_process(Path(model_path), threads) as url:
            for concurrency in levels:
                _run_load(url, bodies, expected, warmup, concurrency, deadline_s)
                load = _run_load(url, bodies, expected, n_requests, concurrency, deadline_s)
                results.append(_bench_result(n_requests, concurrency, *load))
    return results


def _bench_result(
    n_requests: int,
    concurrency: int,
    latencies: list[float],
    errors: int,
    wrong: int,
    seconds: float,
) -> BenchResult:
    ms = np.asarray(latencies) if latencies else np.asarray([float("nan")])
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return BenchResult(
        requests=n_requests,
        concurrency=concurrency,
        errors=errors,
        wrong=wrong,
        seconds=seconds,
        throughput=n_requests / seconds,
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        max_ms=float(ms.max()),
        latencies_ms=[float(v) for v in ms],
    )
