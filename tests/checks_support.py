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
