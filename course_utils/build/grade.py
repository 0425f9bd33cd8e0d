"""The grade report: run a learner's exercise notebooks and say, per task, where they stand.

Each notebook is executed in a fresh kernel, on an in-memory copy (the file is never written),
with its own folder as working directory and every cell run even after an error. Each task
then gets one status:

- ``passed``: its check printed ``✅ Exercise N.k``;
- ``failed``: its check raised (the hint of the ``AssertionError`` is shown), or its check cell
  raised something else (the error is shown);
- ``not started``: the blank ``raise NotImplementedError("Exercise N.k: …")`` is still there;
- ``missing``: the notebook no longer has the task's check cell.

The task list comes from the matching solution notebook's ``# BEGIN SOLUTION N.k`` markers, so a
task whose cells were deleted still shows. Usage::

    python -m course_utils.build.grade                      # every exercises/*.ipynb
    python -m course_utils.build.grade exercises/10_gradcam_exercises.ipynb --json report.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from ..paths import BUILD_DIR, REPO_ROOT
from .exercises import BEGIN, BEGIN_FULL

__all__ = [
    "NotebookGrade",
    "TaskGrade",
    "execute",
    "grade_executed",
    "grade_notebook",
    "main",
    "render_table",
    "solution_for",
    "task_checks",
]

PASSED, FAILED, NOT_STARTED, MISSING = "passed", "failed", "not started", "missing"
DEFAULT_JSON = BUILD_DIR / "grade" / "grade.json"
CHECK_CALL = re.compile(r"\b(check_\w+)\s*\(")  # how a check cell calls its check
PASSED_LINE = re.compile(r"✅ Exercise (\S+?):")  # printed by course_utils.checks' passed()
EXERCISE_ERROR = re.compile(r"Exercise (\S+?):")  # the start of a check's or a blank's error


@dataclass
class TaskGrade:
    """One task's status, and the hint (or error) that explains a failure."""

    task: str
    status: str
    hint: str = ""


@dataclass
class NotebookGrade:
    """The grades of one notebook's tasks, in the solution notebook's order."""

    notebook: str
    tasks: list[TaskGrade] = field(default_factory=list)

    @property
    def passed(self) -> int:
        """How many tasks passed."""
        return sum(t.status == PASSED for t in self.tasks)

    def summary(self) -> str:
        """``3 of 5 tasks passed (1 failed, 1 not started)``."""
        counts = {s: sum(t.status == s for t in self.tasks) for s in (FAILED, NOT_STARTED, MISSING)}
        rest = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        return f"{self.passed} of {len(self.tasks)} tasks passed" + (f" ({rest})" if rest else "")


def solution_for(notebook: Path) -> Path:
    """The solution notebook that lists ``notebook``'s tasks.

    A solution notebook is its own source; ``…/NN_topic_exercises.ipynb`` is matched with
    ``solutions/NN_topic_solutions.ipynb`` next to its folder, else in this repository.

    Raises:
        FileNotFoundError: no matching solution notebook.
    """
    if notebook.name.endswith("_solutions.ipynb"):
        return notebook
    stem = notebook.name.removesuffix(".ipynb").removesuffix("_exercises")
    name = f"{stem}_solutions.ipynb"
    for folder in (notebook.resolve().parent.parent / "solutions", REPO_ROOT / "solutions"):
        if (folder / name).exists():
            return folder / name
    raise FileNotFoundError(f"no solutions/{name} lists the tasks of {notebook}")


def task_checks(solution: NotebookNode) -> dict[str, str | None]:
    """Each task id of a solution notebook, in order, with the check function that grades it.

    The ids are those of the ``# BEGIN SOLUTION N.k: …`` markers; a task's check is the first
    ``check_…(`` call after its marker (``None`` if there is none), which may grade several.
    """
    tasks: dict[str, str | None] = {}
    waiting: list[str] = []  # tasks whose check call has not been seen yet
    for cell in solution.cells:
        if cell.cell_type != "code":
            continue
        for line in cell.source.split("\n"):
            if (begin := BEGIN.match(line)) and (full := BEGIN_FULL.match(begin["rest"])):
                tasks[full["id"]] = None
                waiting.append(full["id"])
            elif waiting and (call := CHECK_CALL.search(line)):
                tasks.update(dict.fromkeys(waiting, call[1]))  # one check may grade two blanks
                waiting = []
    return tasks


def execute(notebook: Path, timeout: int = 600) -> NotebookNode:
    """An executed in-memory copy of ``notebook``: fresh kernel, cwd its folder, every cell run.

    The file on disk is read once and never written.
    """
    from nbclient import NotebookClient

    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        allow_errors=True,
        record_timing=False,
        resources={"metadata": {"path": str(notebook.resolve().parent)}},
    )
    client.execute()
    return nb


def _hint(evalue: str) -> str:
    """The hint of a check's ``AssertionError`` (``Exercise N.k: problem\\nHint: hint``)."""
    problem, _, hint = evalue.partition("\nHint: ")
    problem = problem.split(": ", 1)[-1] if problem.startswith("Exercise ") else problem
    return f"{problem}; hint: {hint}" if hint else problem


def _named(reported: str, tasks: dict[str, str | None]) -> list[str]:
    """The tasks that "Exercise ``reported``" is about: that task, or its parts (8.2a, 8.2b)."""
    if reported in tasks:
        return [reported]
    return [t for t in tasks if t.startswith(reported) and t[len(reported) :].isalpha()]


def _first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0]


def grade_executed(nb: NotebookNode, tasks: dict[str, str | None], name: str) -> NotebookGrade:
    """Grade an executed notebook from its outputs (see the module docstring for the rules).

    Args:
        nb: the executed notebook.
        tasks: task id → check function name, from :func:`task_checks`.
        name: the notebook's name in the report.
    """
    evidence: dict[str, TaskGrade] = {}

    def note(task: str, status: str, hint: str = "") -> None:
        rank = {NOT_STARTED: 0, FAILED: 1, PASSED: 2}  # a blank beats a failure beats a pass
        old = evidence.get(task)
        if old is None or rank[status] < rank[old.status]:
            evidence[task] = TaskGrade(task, status, hint)

    check_cells: dict[str, list[NotebookNode]] = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for check in set(CHECK_CALL.findall(cell.source)):
            check_cells.setdefault(check, []).append(cell)
        for output in cell.get("outputs", []):
            if output.output_type == "stream" and output.name == "stdout":
                for reported in PASSED_LINE.findall(output.text):
                    for task in _named(reported, tasks):
                        note(task, PASSED)
            elif output.output_type == "error" and (named := EXERCISE_ERROR.match(output.evalue)):
                for task in _named(named[1], tasks):
                    if output.ename == "NotImplementedError":
                        note(task, NOT_STARTED)
                    else:
                        note(task, FAILED, _hint(output.evalue))
    grades = []
    for task, check in tasks.items():
        if task in evidence:
            grades.append(evidence[task])
            continue
        cells = check_cells.get(check or "", [])
        errors = [o for c in cells for o in c.get("outputs", []) if o.output_type == "error"]
        if not cells:
            grades.append(TaskGrade(task, MISSING, f"no cell calls {check or 'its check'}()"))
        elif errors:
            error = errors[0]
            problem = f"{error.ename}: {_first_line(error.evalue)}"
            if error.ename == "NotImplementedError":
                problem = f"its check did not run: {_first_line(error.evalue)} is not written yet"
            grades.append(TaskGrade(task, FAILED, problem))
        else:
            grades.append(TaskGrade(task, FAILED, f"{check}() printed no ✅ line"))
    return NotebookGrade(name, grades)


def grade_notebook(notebook: Path, timeout: int = 600) -> NotebookGrade:
    """Execute ``notebook`` (never modifying it) and grade each task of its solution notebook."""
    solution = nbformat.read(solution_for(notebook), as_version=4)
    name = os.path.relpath(notebook) if notebook.is_absolute() else str(notebook)
    return grade_executed(execute(notebook, timeout), task_checks(solution), name)


def render_table(grade: NotebookGrade) -> str:
    """The report of one notebook as a plain-text table, with a total line."""
    width = max([4, *(len(t.task) for t in grade.tasks)])
    lines = [grade.notebook, f"  {'task':<{width}}  {'status':<11}  hint"]
    for t in grade.tasks:
        lines.append(f"  {t.task:<{width}}  {t.status:<11}  {t.hint}".rstrip())
    lines.append(f"  total: {grade.summary()}")
    return "\n".join(lines)


def _default_notebooks() -> list[Path]:
    return sorted((REPO_ROOT / "exercises").glob("*_exercises.ipynb"))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns 0 when every notebook ran, 2 when one could not."""
    parser = argparse.ArgumentParser(
        prog="python -m course_utils.build.grade",
        description="Run exercise notebooks in a fresh kernel and report each task.",
    )
    parser.add_argument(
        "notebooks", nargs="*", type=Path, help="exercise notebooks (default: exercises/*)"
    )
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help=f"report file (default: {DEFAULT_JSON})"
    )
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or _default_notebooks()
    grades: list[NotebookGrade] = []
    status = 0
    for notebook in notebooks:
        try:
            grade = grade_notebook(notebook, args.timeout)
        except (FileNotFoundError, nbformat.reader.NotJSONError) as err:
            print(f"error: {err}", file=sys.stderr)
            status = 2
            continue
        grades.append(grade)
        print(render_table(grade) + "\n", flush=True)
    passed = sum(g.passed for g in grades)
    total = sum(len(g.tasks) for g in grades)
    print(f"all notebooks: {passed} of {total} tasks passed")
    report = {
        "passed": passed,
        "total": total,
        "notebooks": [{**asdict(g), "passed": g.passed, "total": len(g.tasks)} for g in grades],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")
    return status


if __name__ == "__main__":
    sys.exit(main())
