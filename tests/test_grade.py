"""The grade report: task lists from the solution markers, statuses from the outputs, and three
real runs (shipped exercises, solutions, one planted wrong answer) on chapter 10, the quickest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from course_utils.build.exercises import exercise_path
from course_utils.build.grade import (
    FAILED,
    MISSING,
    NOT_STARTED,
    PASSED,
    NotebookGrade,
    TaskGrade,
    grade_executed,
    grade_notebook,
    main,
    render_table,
    solution_for,
    task_checks,
)
from course_utils.paths import REPO_ROOT

pytestmark = pytest.mark.slow  # executes the exercise notebooks

SOLUTION = REPO_ROOT / "solutions" / "10_gradcam_solutions.ipynb"
EXERCISE = exercise_path(SOLUTION)


def solution_ids(path: Path) -> list[str]:
    return list(task_checks(nbformat.read(path, as_version=4)))


# --- the task list and the statuses, on small in-memory notebooks ----------------------------


def test_task_checks_come_from_the_markers_in_order() -> None:
    nb = new_notebook(
        cells=[
            new_code_cell(
                "def f():\n    # BEGIN SOLUTION 3.1: write f\n    return 1\n    # END SOLUTION"
            ),
            new_code_cell("check_f(f)"),
            new_code_cell("# BEGIN SOLUTION 3.2: set g\ng = 2\n# END SOLUTION\ncheck_g(g)"),
            new_code_cell("# BEGIN SOLUTION 3.3a: h\nh = 3\n# END SOLUTION"),
            new_code_cell("# BEGIN SOLUTION 3.3b: i\ni = 4\n# END SOLUTION"),
            new_code_cell("check_hi(h, i)"),
            new_code_cell("# BEGIN SOLUTION 3.10: no check\nj = 5\n# END SOLUTION"),
        ]
    )
    assert task_checks(nb) == {
        "3.1": "check_f",
        "3.2": "check_g",
        "3.3a": "check_hi",
        "3.3b": "check_hi",
        "3.10": None,
    }


def error(ename: str, evalue: str) -> nbformat.NotebookNode:
    return new_output("error", ename=ename, evalue=evalue, traceback=[])


def stdout(text: str) -> nbformat.NotebookNode:
    return new_output("stream", name="stdout", text=text)


def executed_cell(source: str, *outputs: nbformat.NotebookNode) -> nbformat.NotebookNode:
    cell = new_code_cell(source)
    cell.outputs = list(outputs)
    return cell


TASKS = {"1.1": "check_a", "1.2": "check_b", "1.3": "check_c", "1.4": "check_d", "1.5": "check_e"}


def graded(*cells: nbformat.NotebookNode) -> dict[str, TaskGrade]:
    grade = grade_executed(new_notebook(cells=list(cells)), TASKS, "nb")
    assert [t.task for t in grade.tasks] == list(TASKS)
    return {t.task: t for t in grade.tasks}


def test_statuses_from_outputs() -> None:
    grades = graded(
        executed_cell("check_a(a)", stdout("✅ Exercise 1.1: fine\n")),
        executed_cell("b = 1", error("NotImplementedError", "Exercise 1.2: write b")),
        executed_cell("check_b(b)", error("NameError", "name 'b' is not defined")),
        executed_cell(
            "check_c(c)",
            stdout("❌ Exercise 1.3: off by one\n"),
            error("AssertionError", "Exercise 1.3: off by one\nHint: start at 0."),
        ),
        executed_cell("check_d(d)", error("NameError", "name 'd' is not defined")),
    )
    assert grades["1.1"] == TaskGrade("1.1", PASSED)
    assert grades["1.2"] == TaskGrade("1.2", NOT_STARTED)
    assert grades["1.3"] == TaskGrade("1.3", FAILED, "off by one; hint: start at 0.")
    assert grades["1.4"] == TaskGrade("1.4", FAILED, "NameError: name 'd' is not defined")
    assert grades["1.5"].status == MISSING and "check_e" in grades["1.5"].hint


def test_a_refused_shortcut_is_a_failure_and_a_blank_wins_over_a_pass() -> None:
    grades = graded(
        executed_cell("check_a(a)", error("ShortcutRefused", "Exercise 1.1: called F.x\nHint: h")),
        executed_cell("check_b(b)", stdout("✅ Exercise 1.2: ok\n")),
        executed_cell("", error("NotImplementedError", "Exercise 1.2: the second half")),
    )
    assert grades["1.1"] == TaskGrade("1.1", FAILED, "called F.x; hint: h")
    assert grades["1.2"].status == NOT_STARTED


def test_a_failure_wins_over_a_pass_of_the_same_task_in_either_order() -> None:
    ok = stdout("✅ Exercise 1.1: first part right\n")
    wrong = error("AssertionError", "Exercise 1.1: second part wrong\nHint: h")
    for first, then in ((ok, wrong), (wrong, ok)):
        nb = new_notebook(cells=[executed_cell("check_a(a)", first), executed_cell("", then)])
        grade = grade_executed(nb, TASKS, "nb")
        assert grade.tasks[0] == TaskGrade("1.1", FAILED, "second part wrong; hint: h")
        assert "1.1   failed       second part wrong" in render_table(grade)


def test_a_check_named_for_a_task_in_parts_grades_every_part() -> None:
    parts = {"8.2a": "check_x", "8.2b": "check_x", "8.20": "check_y"}
    nb = new_notebook(
        cells=[
            executed_cell("a = 1"),
            executed_cell("b = 2", error("NotImplementedError", "Exercise 8.2b: write b")),
            executed_cell("check_x(a, b)", error("NotImplementedError", "Exercise 8.2b: b")),
            executed_cell("check_y(c)", stdout("✅ Exercise 8.20: fine\n")),
        ]
    )
    grades = {t.task: t for t in grade_executed(nb, parts, "nb").tasks}
    assert grades["8.2a"] == TaskGrade(
        "8.2a", FAILED, "its check did not run: Exercise 8.2b: b is not written yet"
    )
    assert grades["8.2b"].status == NOT_STARTED
    assert grades["8.20"].status == PASSED
    nb.cells[2].outputs = [stdout("✅ Exercise 8.2: both right\n")]
    nb.cells[1].outputs = []
    assert {t.status for t in grade_executed(nb, parts, "nb").tasks} == {PASSED}


def test_table_and_total() -> None:
    grade = NotebookGrade(
        "nb",
        [TaskGrade("1.1", PASSED), TaskGrade("1.2", FAILED, "hint"), TaskGrade("1.3", MISSING)],
    )
    table = render_table(grade)
    assert "1.2   failed       hint" in table
    assert table.endswith("total: 1 of 3 tasks passed (1 failed, 1 missing)")


def test_solution_for(tmp_path: Path) -> None:
    assert solution_for(EXERCISE) == SOLUTION
    assert solution_for(SOLUTION) == SOLUTION
    assert solution_for(tmp_path / "10_gradcam_exercises.ipynb") == SOLUTION  # a learner's copy
    with pytest.raises(FileNotFoundError, match="99_nothing_solutions"):
        solution_for(tmp_path / "99_nothing_exercises.ipynb")


# --- three real runs of chapter 10 (a fresh kernel each) --------------------------------------


def test_shipped_exercises_are_all_not_started_and_unmodified() -> None:
    before, mtime = EXERCISE.read_bytes(), os.stat(EXERCISE).st_mtime_ns
    grade = grade_notebook(EXERCISE)
    assert [t.task for t in grade.tasks] == solution_ids(SOLUTION)
    assert {t.status for t in grade.tasks} == {NOT_STARTED}, render_table(grade)
    assert EXERCISE.read_bytes() == before
    assert os.stat(EXERCISE).st_mtime_ns == mtime


def test_solutions_all_pass() -> None:
    grade = grade_notebook(SOLUTION)
    assert len(grade.tasks) >= 3
    assert grade.passed == len(grade.tasks), render_table(grade)


def test_one_planted_wrong_answer_fails_with_its_hint(tmp_path: Path, capsys) -> None:
    nb = nbformat.read(SOLUTION, as_version=4)
    (cell,) = [c for c in nb.cells if "# BEGIN SOLUTION 10.2:" in c.source]
    head = cell.source.split("# BEGIN SOLUTION")[0]  # the def line and docstring
    cell.source = head + "return (cams - cams.min()) / (cams.max() - cams.min())  # whole batch"
    learner = tmp_path / "10_gradcam_exercises.ipynb"  # graded against solutions/10_…
    nbformat.write(nb, learner)
    report = tmp_path / "report.json"
    assert main([str(learner), "--json", str(report)]) == 0
    grades = {t["task"]: t for t in json.loads(report.read_text())["notebooks"][0]["tasks"]}
    assert list(grades) == solution_ids(SOLUTION)
    assert grades.pop("10.2")["status"] == FAILED
    assert {t["status"] for t in grades.values()} == {PASSED}
    out = capsys.readouterr().out
    assert "10.2  failed" in out and "own minimum" in out  # the check's hint, in the table
