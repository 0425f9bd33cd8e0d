"""Each chapter's headline metrics, written as a small JSON file the book's results page reads.

Files go to ``_build/metrics/<quick|full>/`` at the repository root, or to ``$COURSE_METRICS_DIR``
when it is set, so a quick run never overwrites the numbers of a full one.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from ..paths import BUILD_DIR

__all__ = [
    "metrics_dir",
    "read_execution_times",
    "read_metrics",
    "record_execution_time",
    "record_metrics",
]


def metrics_dir(quick: bool) -> Path:
    """Where the metrics JSON files of this mode are written and read."""
    if env := os.environ.get("COURSE_METRICS_DIR"):
        return Path(env)
    return BUILD_DIR / "metrics" / ("quick" if quick else "full")


def record_metrics(chapter: str, device: torch.device | str, quick: bool, **metrics: Any) -> Path:
    """Write ``<metrics_dir>/<chapter>.json`` with ``metrics`` plus device, mode and versions."""
    payload = {
        "chapter": chapter,
        "device": str(device),
        "mode": "quick" if quick else "full",
        "torch": torch.__version__,
        "machine": platform.machine(),
        "written": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "metrics": metrics,
    }
    path = metrics_dir(quick) / f"{chapter}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path


def read_metrics(quick: bool) -> dict[str, dict[str, Any]]:
    """All chapters recorded in this mode, keyed by chapter name, in order."""
    folder = metrics_dir(quick)
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("[0-9]*.json"))}


def record_execution_time(notebook: str, seconds: float, quick: bool) -> Path:
    """Add one notebook's execution time to ``<metrics_dir>/execution_times.json``."""
    path = metrics_dir(quick) / "execution_times.json"
    times = json.loads(path.read_text()) if path.exists() else {}
    times[notebook] = round(seconds, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(times, indent=2, sort_keys=True) + "\n")
    return path


def read_execution_times(quick: bool) -> dict[str, float]:
    """Seconds each notebook took in the last pipeline run of this mode (empty if none)."""
    path = metrics_dir(quick) / "execution_times.json"
    return json.loads(path.read_text()) if path.exists() else {}
