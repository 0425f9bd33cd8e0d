"""Each chapter's headline metrics, written as a small JSON file the book's results page reads.

Files go to ``$COURSE_METRICS_DIR`` (the pipeline sets it to ``_build/metrics``), or to
``_build/metrics`` at the repository root when run by hand.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

__all__ = ["metrics_dir", "read_metrics", "record_metrics"]


def metrics_dir() -> Path:
    """Where metrics JSON files are written and read."""
    if env := os.environ.get("COURSE_METRICS_DIR"):
        return Path(env)
    return Path(__file__).resolve().parents[1] / "_build" / "metrics"


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
    path = metrics_dir() / f"{chapter}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path


def read_metrics() -> dict[str, dict[str, Any]]:
    """All recorded chapters, keyed by chapter name, in order."""
    folder = metrics_dir()
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
