"""The load benchmarks of chapter 9: the API under waitress in a subprocess on a free loopback
port, requests from client threads; latency percentiles, throughput, errors and peak memory.

- :func:`bench` / :func:`bench_sweep`: one model file, one or several concurrencies;
- :func:`bench_models`: several model files one after the other, in one run (``python -m
  serving.loadtest bench [--model FILE …] [--requests 2000] [--concurrency 8]``), by
  default the ONNX export and the state_dict checkpoint of the same weights;
- :func:`bench_memory`: the server's peak resident memory (Linux's ``VmHWM``) while clients send
  huge 16-bit PNGs (``python -m serving.loadtest bench-memory [--model FILE]``).
"""

from __future__ import annotations

import argparse
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
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from course_utils.bad_files import sixteen_bit_png
from course_utils.paths import REPO_ROOT

from .serve import DEFAULT_THREADS
from .upload import SIZE, encode_png, normalise_array

__all__ = [
    "BenchResult",
    "MemoryReport",
    "bench",
    "bench_memory",
    "bench_models",
    "bench_sweep",
    "default_models",
    "main",
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


def _bench_images(n: int = 200) -> tuple[list[bytes], np.ndarray]:
    """``n`` Fashion-MNIST test images as PNG bytes and as ``uint8 [n, 28, 28]`` (random images
    if the data is missing)."""
    from course_utils.data import DataUnavailableError, load_tensors

    try:
        images = load_tensors()["test"].images[:n].numpy()
    except DataUnavailableError:
        images = np.random.default_rng(0).integers(0, 256, (n, SIZE, SIZE), dtype=np.uint8)
    return [encode_png(img) for img in images], images


def _expected(model_path: Path, images: np.ndarray) -> list[int]:
    """The model's own predictions on ``images``, loaded the way the server loads it."""
    from .inference import load_model

    x = np.concatenate([normalise_array(img) for img in images])
    return load_model(model_path)(x).argmax(1).tolist()


@dataclass
class ServerProcess:
    """A running ``python -m serving.serve serve``: its URL and process id."""

    url: str
    pid: int


@contextmanager
def _server_process(model_path: Path, threads: int, timeout: float = 60) -> Iterator[ServerProcess]:
    """``python -m serving.serve serve`` in a subprocess; yields it, stops it on exit."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "serving.serve", "serve", "--model", str(model_path)]
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
        yield ServerProcess(line[0].split()[-1], proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def default_models(scratch: Path) -> dict[str, Path]:
    """The ONNX export and the state_dict checkpoint of the same weights, to compare.

    The weights are chapter 1's checkpoint (full, else quick), or an untrained model saved in
    ``scratch`` (latency does not depend on the weights); the ``.onnx`` is chapter 8's export of
    them if it exists, else exported into ``scratch`` with chapter 8's ``export_onnx``.
    """
    import torch

    from course_utils.artefacts import sidecar_path
    from course_utils.baseline import BASELINE
    from course_utils.export import export_dir, export_onnx
    from course_utils.models import FashionCNN
    from course_utils.train import checkpoint_path, load_checkpoint, save_checkpoint

    for quick in (False, True):
        checkpoint = checkpoint_path(BASELINE, quick=quick)
        if checkpoint.exists():
            onnx = export_dir(quick=quick) / "fashion_cnn.onnx"
            if not sidecar_path(checkpoint).is_file():  # saved before checkpoints had one
                model = load_checkpoint(checkpoint)[0]
                checkpoint = save_checkpoint(model, scratch / checkpoint.name)
            break
    else:
        torch.manual_seed(0)
        checkpoint = save_checkpoint(FashionCNN(), scratch / "untrained.pt")
        onnx = scratch / "untrained.onnx"
    if not onnx.exists() or onnx.stat().st_mtime < checkpoint.stat().st_mtime:
        model = load_checkpoint(checkpoint)[0].eval()
        onnx = export_onnx(model, torch.zeros(2, 1, SIZE, SIZE), scratch / onnx.name)
    return {"ONNX Runtime": onnx, "state_dict": checkpoint}


def bench(
    model_path: str | Path | None = None,
    n_requests: int = 2000,
    concurrency: int = 8,
    *,
    threads: int = DEFAULT_THREADS,
    warmup: int = 50,
    deadline_s: float = 300.0,
) -> BenchResult:
    """Load-test the API: a waitress subprocess on a free loopback port, ``n_requests`` POSTs of
    28×28 test-image PNGs from ``concurrency`` client threads (after ``warmup`` untimed ones).

    Every response must be a 200 whose ``class_index`` equals the model's own prediction on the
    same image; anything else counts as an error (``errors``) or a wrong answer (``wrong``).
    Requests not sent within ``deadline_s`` count as errors. Without ``model_path`` it serves the
    ONNX export of chapter 1's weights (see :func:`default_models`).
    """
    return bench_sweep(
        model_path, n_requests, [concurrency], threads=threads, warmup=warmup, deadline_s=deadline_s
    )[0]


def bench_sweep(
    model_path: str | Path | None = None,
    n_requests: int = 2000,
    concurrencies: Sequence[int] = (1, 2, 4, 8),
    *,
    threads: int = DEFAULT_THREADS,
    warmup: int = 50,
    deadline_s: float = 300.0,
) -> list[BenchResult]:
    """:func:`bench` at each of ``concurrencies`` in turn, against one server process (started
    once), so the levels differ only in how many clients send at the same time.

    Returns:
        One :class:`BenchResult` per concurrency, in the order given.
    """
    levels = list(concurrencies)
    _check_sizes(n_requests, levels)
    with tempfile.TemporaryDirectory() as scratch:
        if model_path is None:
            model_path = default_models(Path(scratch))["ONNX Runtime"]
        bodies, images = _bench_images()
        expected = _expected(Path(model_path), images)
        results = []
        with _server_process(Path(model_path), threads) as server:
            for concurrency in levels:
                _run_load(server.url, bodies, expected, warmup, concurrency, deadline_s)
                load = _run_load(server.url, bodies, expected, n_requests, concurrency, deadline_s)
                results.append(_bench_result(n_requests, concurrency, *load))
    return results


def bench_models(
    model_paths: Sequence[str | Path] | None = None,
    n_requests: int = 2000,
    concurrency: int = 8,
    *,
    threads: int = DEFAULT_THREADS,
    warmup: int = 50,
    deadline_s: float = 300.0,
) -> dict[str, BenchResult]:
    """:func:`bench` for each model file, one server after the other, in one run (so the machine's
    state is as similar as it gets). Without ``model_paths``: :func:`default_models`.

    Returns:
        ``{name: BenchResult}``, the file name (or the kind, for the defaults) as the name.
    """
    _check_sizes(n_requests, [concurrency])
    with tempfile.TemporaryDirectory() as scratch:
        if model_paths:
            models = {Path(p).name: Path(p) for p in model_paths}
        else:
            models = default_models(Path(scratch))
        return {
            name: bench(
                path,
                n_requests,
                concurrency,
                threads=threads,
                warmup=warmup,
                deadline_s=deadline_s,
            )
            for name, path in models.items()
        }


def _check_sizes(n_requests: int, levels: list[int]) -> None:
    if not 1 <= n_requests <= 100_000 or not levels or not all(1 <= c <= 64 for c in levels):
        raise ValueError("n_requests must be 1…100,000 and each concurrency 1…64")


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


# --- memory under huge uploads --------------------------------------------------------------------


@dataclass
class MemoryReport:
    """What :func:`bench_memory` measured (memory in MB of 10**6 bytes)."""

    model: str
    clients: int
    requests: int
    side: int
    upload_bytes: int
    statuses: dict[int, int]
    server_errors: int
    rss_start_mb: float
    peak_rss_mb: float
    seconds: float

    def summary(self) -> str:
        """One readable paragraph."""
        answers = ", ".join(f"{n} × {status}" for status, n in sorted(self.statuses.items()))
        return (
            f"{self.requests} uploads of a {self.side}×{self.side} 16-bit PNG "
            f"({self.upload_bytes:,} bytes) from {self.clients} clients to {self.model} in "
            f"{self.seconds:.1f} s: answers {answers}; server RSS {self.rss_start_mb:.0f} MB at "
            f"start, peak {self.peak_rss_mb:.0f} MB"
        )


def _peak_rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process, from Linux's ``/proc/<pid>/status``."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024 / 1e6  # kB
    return fields["VmRSS"], fields["VmHWM"]


def bench_memory(
    model_path: str | Path | None = None,
    clients: int = 8,
    n_requests: int = 32,
    side: int = 4096,
    *,
    threads: int = DEFAULT_THREADS,
) -> MemoryReport:
    """Peak server memory while ``clients`` send ``n_requests`` ``side × side`` 16-bit PNGs.

    The server runs as ``python -m serving.serve serve`` in a subprocess; its peak resident
    set size is Linux's ``VmHWM`` after the load. Each answer's status is counted (200, or a
    4xx/503 if the server refuses the image); ``server_errors`` counts 500s and failed requests.
    Without ``model_path``: the ONNX export of chapter 1's weights.
    """
    if sys.platform != "linux":
        raise RuntimeError("bench_memory reads /proc/<pid>/status: it runs on Linux only")
    png = sixteen_bit_png(side)
    body, content_type = _multipart(png)
    with tempfile.TemporaryDirectory() as scratch:
        if model_path is None:
            model_path = default_models(Path(scratch))["ONNX Runtime"]
        with _server_process(Path(model_path), threads) as server:
            rss_start, _ = _peak_rss_mb(server.pid)
            host, port = server.url.removeprefix("http://").split(":")

            def one(_: int) -> int:
                conn = http.client.HTTPConnection(host, int(port), timeout=120)
                try:
                    conn.request("POST", "/predict", body, {"Content-Type": content_type})
                    response = conn.getresponse()
                    response.read()
                    return response.status
                except (OSError, http.client.HTTPException):
                    return 0
                finally:
                    conn.close()

            start = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                statuses = Counter(pool.map(one, range(n_requests)))
            seconds = time.perf_counter() - start
            _, peak = _peak_rss_mb(server.pid)
    return MemoryReport(
        model=Path(model_path).name,
        clients=clients,
        requests=n_requests,
        side=side,
        upload_bytes=len(png),
        statuses=dict(statuses),
        server_errors=sum(n for status, n in statuses.items() if status == 0 or status >= 500),
        rss_start_mb=rss_start,
        peak_rss_mb=peak,
        seconds=seconds,
    )


# --- the command line -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m serving.loadtest bench|bench-memory``; the exit status (1: errors)."""
    parser = argparse.ArgumentParser(
        prog="python -m serving.loadtest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    load = sub.add_parser("bench", help="load-test the API on a free loopback port")
    load.add_argument(
        "--model",
        type=Path,
        action="append",
        help="a model file; repeat to compare (default: chapter 8's .onnx and chapter 1's .pt)",
    )
    load.add_argument("--requests", type=int, default=2000, help="timed requests (≤ 100,000)")
    load.add_argument("--concurrency", type=int, default=8, help="client threads (≤ 64)")
    load.add_argument(
        "--threads", type=int, default=DEFAULT_THREADS, help="waitress worker threads"
    )
    load.add_argument("--deadline", type=float, default=300.0, help="stop sending after (s)")
    load.add_argument("--json", action="store_true", help="print the results as JSON lines")
    memory = sub.add_parser("bench-memory", help="peak server memory under huge uploads")
    memory.add_argument("--model", type=Path, default=None, help="default: chapter 8's .onnx")
    memory.add_argument("--clients", type=int, default=8, help="clients sending at once")
    memory.add_argument("--requests", type=int, default=32, help="uploads in all")
    memory.add_argument("--side", type=int, default=4096, help="image width and height")
    args = parser.parse_args(argv)
    if args.command == "bench-memory":
        report = bench_memory(args.model, args.clients, args.requests, args.side)
        print(report.summary())
        return 0 if report.server_errors == 0 else 1
    results = bench_models(
        args.model, args.requests, args.concurrency, threads=args.threads, deadline_s=args.deadline
    )
    for name, result in results.items():
        if args.json:
            fields = {k: v for k, v in asdict(result).items() if k != "latencies_ms"}
            print(json.dumps({"model": name, **fields}))
        else:
            print(f"{name}: {result.summary()}")
    return 0 if all(r.errors == 0 and r.wrong == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
