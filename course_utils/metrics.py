"""What a chapter records for the book's results page: its headlines and raw metrics, as JSON.

A chapter passes its **headlines** (:class:`Headline`: a label, a value, a unit and a format) next
to its raw metrics. Files go to ``_build/metrics/<quick|full>/`` at the repository root, or to
``$COURSE_METRICS_DIR`` when it is set, so a quick run never overwrites a full one's numbers.
The page reads them with :mod:`course_utils.build.results`.
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

from .paths import BUILD_DIR

__all__ = ["Headline", "metrics_dir", "processor_name", "record_metrics"]


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
