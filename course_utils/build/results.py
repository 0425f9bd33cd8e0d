"""Reading the chapters' metrics for the book's results page, and the notebooks' execution times.

Chapters write their records with :func:`course_utils.metrics.record_metrics`; the page shows the
headlines and falls back to raw keys for old records without them.
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path
from typing import Any

from ..metrics import Headline, metrics_dir

__all__ = [
    "format_headline",
    "format_metric",
    "headlines_of",
    "metric_label",
    "read_execution_times",
    "read_metrics",
    "record_execution_time",
]


def format_headline(headline: Headline) -> str:
    """The value as a reader sees it: ``"92.2%"``, ``"+4.7 points (beyond noise)"``, ``"15 ms"``."""
    number = format(headline.value, headline.fmt)
    gap = "" if headline.unit in ("", "%", "×") else " "
    text = f"{number}{gap}{headline.unit}"
    return f"{text} ({headline.note})" if headline.note else text


def headlines_of(record: dict[str, Any]) -> list[Headline]:
    """The headlines of a record read by :func:`read_metrics`; ``[]`` for an older record."""
    return [Headline(**h) for h in record.get("headlines", [])]


# Words of metric keys spelled out for readers; other words are kept as they are.
_WORDS = {
    "bn": "BatchNorm",
    "ms": "(ms)",
    "mb": "(MB)",
    "std": "s.d.",
    "iqr": "IQR",
    "png": "PNG",
    "relu": "ReLU",
    "api": "API",
    "cpu": "CPU",
    "lr": "learning rate",
    "abs": "|diff|",
    "val": "validation",
    "torchcam": "torchcam",
}
_FRACTION_WORDS = ("accuracy", "fraction", "purity")


def metric_label(key: str) -> str:
    """A raw metric key as a label: ``"test_accuracy_bn_mean"`` → ``"Test accuracy BatchNorm
    mean"``, ``"predict_ms"`` → ``"Predict (ms)"``, ``"images_per_s"`` → ``"Images per second"``.
    """
    text = " ".join(_WORDS.get(word, word) for word in key.split("_") if word)
    text = text.replace(" per s", " per second").replace("max |diff| diff", "max |diff|")
    return text[:1].upper() + text[1:]


def format_metric(key: str, value: Any) -> str:
    """A recorded value rounded for reading: accuracy-like fractions as percentages, their
    spreads and gaps in percentage points, other numbers to three significant digits."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if any(w in key for w in _FRACTION_WORDS) and 0 <= value <= 1 and "std" not in key:
            return f"{value:.1%}"
        if "gap" in key or ("std" in key and any(w in key for w in _FRACTION_WORDS)):
            return f"{100 * value:.1f} points"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_metric(key, v) for v in value)
    return str(value)


def read_metrics(quick: bool) -> dict[str, dict[str, Any]]:
    """All chapters recorded in this mode, keyed by chapter name, in order."""
    folder = metrics_dir(quick)
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("[0-9]*.json"))}


def record_execution_time(notebook: str, seconds: float, quick: bool) -> Path:
    """Add one notebook's execution time to ``<metrics_dir>/execution_times.json`` (under a
    lock: notebooks running in parallel lanes finish at the same time)."""
    path = metrics_dir(quick) / "execution_times.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(".execution_times.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        times = json.loads(path.read_text()) if path.exists() else {}
        times[notebook] = round(seconds, 1)
        path.write_text(json.dumps(times, indent=2, sort_keys=True) + "\n")
    return path


def read_execution_times(quick: bool) -> dict[str, float]:
    """Seconds each notebook took in the last pipeline run of this mode (empty if none)."""
    path = metrics_dir(quick) / "execution_times.json"
    return json.loads(path.read_text()) if path.exists() else {}
