"""``course_utils.checks._common``: the call-and-wrap helper, the shortcut refusal, and the
experiment tasks' report check (structure, verdict, reruns chosen by the check)."""

from __future__ import annotations

import random
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_utils.checks import _common
from course_utils.checks._common import (
    ShortcutRefused,
    call,
    choose,
    refuse,
    reported_runs_verdict,
    same_data,
)
from course_utils.data import FashionMNISTTensors, TensorLoader


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


# --- the experiment tasks' report check ----------------------------------------------------------

ARMS = ("a", "b")
VERDICTS = ("a higher", "b higher", "within noise")
TRUE = {("a", 0): 0.50, ("a", 1): 0.70, ("b", 0): 0.60, ("b", 1): 0.40}  # within noise


def report(values=TRUE) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for (arm, seed), v in values.items():
        out.setdefault(arm, {})[seed] = v
    return out


def check(reported, verdict="within noise", recompute=None, **kwargs) -> str:
    return reported_runs_verdict(
        "9.9",
        reported,
        verdict,
        arms=ARMS,
        verdicts=VERDICTS,
        recompute=recompute or (lambda arm, seed: TRUE[arm, seed]),
        tolerance=0.01,
        what="score",
        **kwargs,
    )


def test_choose_ignores_the_learner_s_seeds() -> None:
    """The run a check reruns comes from its own generator: seeding random, NumPy and torch the
    same way (as seed_everything does) before each choice does not fix it."""
    picks = set()
    for _ in range(8):
        random.seed(0)
        torch.manual_seed(0)
        picks.add(choose(list(range(1000))))
    assert len(picks) > 1


def test_one_rerun_is_chosen_by_the_check_not_by_the_report(monkeypatch) -> None:
    rerun: list[tuple[str, int]] = []

    class Last:
        def randrange(self, n: int) -> int:
            return n - 1

    monkeypatch.setattr(_common, "_PICKER", Last())
    check(report(), recompute=lambda a, s: rerun.append((a, s)) or TRUE[a, s])
    assert rerun == [("b", 1)]


def test_all_reruns_catch_a_report_wrong_in_one_run(capsys) -> None:
    wrong = report({**TRUE, ("b", 0): 0.65})
    check(report(), rerun="all")
    with pytest.raises(AssertionError, match=r"b, seed 0: reported 0.6500, a rerun gave 0.6000"):
        check(wrong, rerun="all")
    assert "❌ Exercise 9.9" in capsys.readouterr().out


def test_explain_names_the_mistake_before_the_protocol(capsys) -> None:
    negated = report({k: -v for k, v in TRUE.items()})
    hint = "your score has the opposite sign"

    def explain(reported, again):
        return hint if all(abs(reported[r] + again[r]) < 1e-9 for r in again) else None

    with pytest.raises(AssertionError, match=hint):
        check(negated, rerun="all", explain=explain)
    with pytest.raises(
        AssertionError, match="report the numbers of your runs: for a seed 0 the check measured"
    ):
        check(report({**TRUE, ("a", 0): 0.45}), rerun="all", explain=explain)


@pytest.mark.parametrize(
    ("reported", "problem"),
    [
        ({"a": {"0": 0.5, "1": 0.7}, "b": {"0": 0.6, "1": 0.4}}, "is not an int"),
        (report({**TRUE, ("a", 0): 50.0}), "outside [0, 1]"),
        ({"a": {0: 0.5, 1: 0.7}, "b": {0: 0.6, 2: 0.4}}, "different seeds"),
        ({"a": {0: 0.5, 1: "x"}, "b": {0: 0.6, 1: 0.4}}, "is not a number"),
        ({1: {0: 0.5, 1: 0.7}, "b": {0: 0.6, 1: 0.4}}, "expected the arms"),
        ([0.5, 0.7], "expected the arms"),
    ],
    ids=["string-seeds", "out-of-range", "other-seeds", "not-a-number", "mixed-keys", "a-list"],
)
def test_malformed_reports_fail_with_a_hint_not_a_crash(reported, problem: str, capsys) -> None:
    with pytest.raises(AssertionError, match=re.escape(problem)) as info:
        check(reported, value_range=(0.0, 1.0))
    assert "Hint:" in str(info.value)
    assert "❌ Exercise 9.9" in capsys.readouterr().out


def test_same_data_compares_images_and_labels() -> None:
    g = torch.Generator().manual_seed(0)
    data = FashionMNISTTensors(
        torch.randint(0, 256, (8, 28, 28), generator=g, dtype=torch.uint8),
        torch.randint(0, 10, (8,), generator=g),
    )
    assert same_data(data, data) and same_data(TensorLoader(data, 4), data)
    assert not same_data(data.subset(torch.arange(7)), data)
    other = FashionMNISTTensors(data.images, data.labels.roll(1))
    assert not same_data(other, data)
    assert not same_data([1, 2, 3], data)
