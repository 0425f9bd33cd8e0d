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
