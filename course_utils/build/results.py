"""Each chapter's metrics, written as a small JSON file the book's results page reads.

A chapter passes its **headlines** (:class:`Headline`: a label, a value, a unit and a format) next
to its raw metrics; the page shows the headlines and falls back to raw keys for old records
without them. Files go to ``_build/metrics/<quick|full>/`` at the repository root, or to
``$COURSE_METRICS_DIR`` when it is set, so a quick run never overwrites a full one's numbers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..paths import BUILD_DIR

__all__ = [
    "Headline",
    "format_headline",
    "format_metric",
    "headlines_of",
    "metric_label",
    "metrics_dir",
    "processor_name",
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


@dataclasses.dataclass(frozen=True)
class Headline:
    """One number a reader should take from a chapter, as it is shown: ``value`` in ``unit``.

    ``fmt`` is a format spec for ``value`` (``".1f"``, ``"+.1f"``); ``note`` is a short
    qualifier shown in brackets ("beyond noise"). Use :meth:`percent` and :meth:`points` for
    fractions, so that the stored value is the one printed.
    """

    label: str
    value: float
    unit: str = ""
    fmt: str = ".3g"
    note: str = ""

    def __post_init__(self) -> None:
        if not self.label.strip():
            raise ValueError("Headline needs a label, e.g. 'test accuracy'")
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)):
            raise TypeError(f"Headline {self.label!r}: value must be a number, got {self.value!r}")
        if not math.isfinite(self.value):
            raise ValueError(f"Headline {self.label!r}: value is {self.value}")
        try:
            format(self.value, self.fmt)
        except ValueError as err:
            raise ValueError(f"Headline {self.label!r}: bad format {self.fmt!r}") from err
        object.__setattr__(self, "value", float(self.value))

    @classmethod
    def percent(cls, label: str, fraction: float, fmt: str = ".1f", note: str = "") -> Headline:
        """A fraction (0.922) shown as a percentage ("92.2%")."""
        return cls(label, 100 * float(fraction), "%", fmt, note)

    @classmethod
    def points(
        cls, label: str, fraction_diff: float, fmt: str = "+.1f", note: str = ""
    ) -> Headline:
        """A difference of two fractions (0.047) shown in percentage points ("+4.7 points")."""
        return cls(label, 100 * float(fraction_diff), "points", fmt, note)


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


def record_metrics(
    chapter: str,
    device: torch.device | str,
    quick: bool,
    headlines: Sequence[Headline] = (),
    **metrics: Any,
) -> Path:
    """Write ``<metrics_dir>/<chapter>.json``: headlines, ``metrics``, device, mode, versions."""
    if not all(isinstance(h, Headline) for h in headlines):
        raise TypeError("headlines must be Headline objects, e.g. Headline.percent(...)")
    payload = {
        "chapter": chapter,
        "device": str(device),
        "mode": "quick" if quick else "full",
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": processor_name(),
        "threads": torch.get_num_threads(),
        "written": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "headlines": [dataclasses.asdict(h) for h in headlines],
        "metrics": metrics,
    }
    path = metrics_dir(quick) / f"{chapter}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path


def processor_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
