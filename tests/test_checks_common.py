"""``course_utils.checks._common``: the call-and-wrap helper and the shortcut refusal."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_utils.checks._common import ShortcutRefused, call, refuse


def test_call_returns_the_result_and_wraps_a_crash_with_a_hint(capsys) -> None:
    assert call("9.9", "twice()", lambda v: 2 * v, 21, hint="h") == 42
    with pytest.raises(AssertionError, match=r"twice\(\) raised ZeroDivisionError") as info:
        call("9.9", "twice()", lambda v: v / 0, 1, hint="do not divide by zero")
    assert "Hint: do not divide by zero" in str(info.value)
    assert "❌ Exercise 9.9" in capsys.readouterr().out


def test_call_passes_unfinished_blanks_and_failed_checks_through() -> None:
    def blank() -> None:
        raise NotImplementedError("Exercise 9.9: write it")

    with pytest.raises(NotImplementedError, match="write it"):
        call("9.9", "blank()", blank, hint="h")
    with pytest.raises(AssertionError, match="^inner$"):
        call("9.9", "inner()", lambda: (_ for _ in ()).throw(AssertionError("inner")), hint="h")


def test_refuse_switches_a_function_off_inside_the_block_only() -> None:
    x = torch.ones(4)
    with refuse("4.1", [(F, "dropout")], task="dropout"):
        with pytest.raises(ShortcutRefused, match="torch.nn.functional.dropout"):
            F.dropout(x, 0.5, True)
        assert torch.equal(x * 2, x + x)  # everything else still works
    assert F.dropout(x, 0.0, True).equal(x)  # restored


def test_refuse_switches_off_every_shortcut_of_its_list() -> None:
    shortcuts = [(F, "relu"), (torch, "relu"), (nn, "ReLU")]
    x = torch.randn(8)
    with refuse("2.1", shortcuts, task="ReLU"):
        for owner, name in shortcuts:
            with pytest.raises(ShortcutRefused, match=rf"called {owner.__name__}\.{name}\n"):
                getattr(owner, name)(x)
        by_hand = x.clamp(min=0)  # the answer the task asks for still runs
    assert torch.equal(by_hand, F.relu(x)) and torch.equal(nn.ReLU()(x), torch.relu(x))


def test_refuse_restores_after_an_exception() -> None:
    original = F.batch_norm
    with pytest.raises(RuntimeError), refuse("2.2", [(F, "batch_norm")], task="BatchNorm"):
        raise RuntimeError("the learner's code crashed")
    assert F.batch_norm is original
