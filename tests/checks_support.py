"""What the chapter tests of the ``check_*`` helpers share: asserting a pass or a failure."""

from __future__ import annotations

from collections.abc import Callable

import pytest


def fails(check: Callable, answer: object, hint: str, ex: str, capsys) -> str:
    """``check(answer)`` must raise an AssertionError whose message contains ``hint`` and print
    the ❌ line of exercise ``ex``; returns the message."""
    with pytest.raises(AssertionError) as err:
        check(answer)
    assert hint in str(err.value), str(err.value)
    assert f"❌ Exercise {ex}:" in capsys.readouterr().out
    return str(err.value)


def passes(check: Callable, answer: object, ex: str, capsys) -> None:
    """``check(answer)`` must pass and print the ✅ line of exercise ``ex``."""
    check(answer)
    assert capsys.readouterr().out.startswith(f"✅ Exercise {ex}:")


def honest_verdict(
    values: dict[str, dict[int, float]], a: str, b: str, verdicts: tuple[str, str, str]
) -> str:
    """The verdict ``experiments.compare`` gives for ``{arm: {seed: value}}``: ``verdicts[0]``
    when ``a`` is beyond noise above ``b``, ``verdicts[1]`` when below, else ``verdicts[2]``."""
    import pandas as pd

    from course_utils.experiments import compare

    frame = pd.DataFrame(
        {"variant": arm, "seed": s, "v": v} for arm, runs in values.items() for s, v in runs.items()
    )
    c = compare(frame, a, b, "v")
    if c.beyond_noise:
        return verdicts[0] if c.diff > 0 else verdicts[1]
    return verdicts[2]


def old_pick(reported: dict[str, dict[int, float]]) -> tuple[str, int]:
    """The run that the experiment checks used to retrain (before issue 20): chosen from the
    sum of the reported values, so a report could steer it."""
    rows = [(a, s, v) for a, runs in reported.items() for s, v in runs.items()]
    runs = sorted(((a, s) for a, s, _ in rows), key=str)
    return runs[int(round(abs(sum(v for _, _, v in rows)) * 1e6)) % len(runs)]


def right_for_one_run_only(
    honest: dict[str, dict[int, float]], keep: tuple[str, int]
) -> dict[str, dict[int, float]]:
    """The honest values for ``keep``, the others moved by 0.2 towards the middle of [0, 1]
    (and a few millionths), so that the sum of the report picks ``keep`` under the old rule."""
    others = [(a, s) for a, runs in honest.items() for s in runs if (a, s) != keep]
    for extra in range(40):
        fake = {a: dict(runs) for a, runs in honest.items()}
        for a, s in others:
            fake[a][s] += 0.2 if fake[a][s] < 0.5 else -0.2
        fake[others[0][0]][others[0][1]] += extra * 1e-6
        if old_pick(fake) == keep:
            return fake
    raise AssertionError("no report found")
