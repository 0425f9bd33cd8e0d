"""The exercise tooling: the generator, the sync of exercises/ with solutions/, and both directions.

Strict nbval of the solution notebooks is run by the main test command
(``pytest --nbval solutions/ --nbval-sanitize-with solutions/nbval_sanitize.cfg``), not here.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from course_utils.build.exercises import (
    MarkerError,
    build,
    exercise_path,
    make_exercise,
    render,
    solution_notebooks,
    stale,
)
from course_utils.paths import REPO_ROOT

ROOT = REPO_ROOT
SOLUTIONS = solution_notebooks(ROOT)
EXERCISES = sorted((ROOT / "exercises").glob("*.ipynb"))
MARKER_ID = re.compile(r"^[ \t]*# BEGIN SOLUTION (\S+):", re.MULTILINE)
BLANK_ID = re.compile(r"raise NotImplementedError\(\s*[\"']Exercise (\S+):")


def notebook(*cells: nbformat.NotebookNode) -> nbformat.NotebookNode:
    nb = new_notebook(cells=list(cells))
    nb.metadata = {
        "kernelspec": {
            "display_name": "Python 3 (ipykernel)",
            "language": "python",
            "name": "python3",
        },
        "language_info": {"name": "python"},
    }
    return nb


def executed(source: str, **metadata: object) -> nbformat.NotebookNode:
    cell = new_code_cell(source, metadata=metadata, execution_count=3)
    cell.outputs = [new_output("stream", name="stdout", text="done\n")]
    return cell


# --- (a) exercises/ is in sync ---------------------------------------------------------------


def test_there_are_solution_notebooks() -> None:
    assert SOLUTIONS, "no solutions/*_solutions.ipynb found"


def test_exercises_are_in_sync() -> None:
    problems = stale(ROOT)
    fix = "run `python -m course_utils.exercises build`:\n"
    assert not problems, fix + "\n".join(problems)


# --- (b) the generator, on small in-memory notebooks ------------------------------------------


def test_block_is_replaced_at_its_indentation() -> None:
    source = (
        "def f(x):\n"
        '    """Double x."""\n'
        "    # BEGIN SOLUTION 1.2: double x\n"
        "    y = 2 * x\n"
        "    return y\n"
        "    # END SOLUTION\n"
        "\n"
        "print(f)"
    )
    exercise = make_exercise(notebook(executed(source)))
    assert exercise.cells[0].source == (
        "def f(x):\n"
        '    """Double x."""\n'
        "    # YOUR CODE HERE\n"
        '    raise NotImplementedError("Exercise 1.2: double x")\n'
        "\n"
        "print(f)"
    )


def test_several_blocks_in_one_cell_and_top_level() -> None:
    source = (
        "# BEGIN SOLUTION 2.1: set a\na = 1\n# END SOLUTION\n"
        "b = 2\n"
        "# BEGIN SOLUTION 2.2: set c\nc = 3\n# END SOLUTION"
    )
    out = make_exercise(notebook(executed(source))).cells[0].source
    assert out == (
        '# YOUR CODE HERE\nraise NotImplementedError("Exercise 2.1: set a")\n'
        "b = 2\n"
        '# YOUR CODE HERE\nraise NotImplementedError("Exercise 2.2: set c")'
    )


def test_long_instruction_is_wrapped_like_ruff_format() -> None:
    instruction = "a long instruction " * 6
    source = (
        f"if True:\n    # BEGIN SOLUTION 3.1: {instruction.strip()}\n    pass\n    # END SOLUTION"
    )
    out = make_exercise(notebook(executed(source))).cells[0].source.splitlines()
    assert out[2] == "    raise NotImplementedError("
    assert out[3] == f'        "Exercise 3.1: {instruction.strip()}"'
    assert out[4] == "    )"
    assert all(len(line) <= 100 for line in out[:2])


def test_quotes_in_instruction_stay_valid_python() -> None:
    source = "# BEGIN SOLUTION 1.1: return 'a' or \"b\"\nx = 1\n# END SOLUTION"
    out = make_exercise(notebook(executed(source))).cells[0].source
    with pytest.raises(NotImplementedError, match="Exercise 1.1: return 'a' or \"b\""):
        exec(compile(out, "<cell>", "exec"), {})


def test_outputs_counts_and_run_metadata_are_stripped_tags_kept() -> None:
    cell = executed(
        "x = 1",
        tags=["nbval-ignore-output", "hide-input"],
        execution={"iopub.status.busy": "2024-01-01T00:00:00Z"},
    )
    nb = notebook(cell, new_markdown_cell("text"))
    exercise = make_exercise(nb)
    out = exercise.cells[0]
    assert out.outputs == [] and out.execution_count is None
    assert out.metadata == {"tags": ["nbval-ignore-output", "hide-input"]}
    assert exercise.metadata == nb.metadata
    assert nb.cells[0].outputs, "make_exercise must not modify its argument"


def test_solution_only_cells_are_dropped() -> None:
    nb = notebook(
        new_markdown_cell("Task"),
        new_markdown_cell("Discussion of the answer", metadata={"tags": ["solution-only"]}),
        executed("print('answer')", tags=["solution-only"]),
        executed("check()"),
    )
    exercise = make_exercise(nb)
    assert [c.source for c in exercise.cells] == ["Task", "check()"]


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("# BEGIN SOLUTION 1.1: a\nx = 1", "has no END SOLUTION"),
        ("x = 1\n# END SOLUTION", "without a BEGIN SOLUTION"),
        (
            "# BEGIN SOLUTION 1.1: a\n# BEGIN SOLUTION 1.2: b\n# END SOLUTION\n# END SOLUTION",
            "nested",
        ),
        ("# BEGIN SOLUTION\nx = 1\n# END SOLUTION", "<id>: <instruction>"),
        ("# BEGIN SOLUTION 1.1:\nx = 1\n# END SOLUTION", "<id>: <instruction>"),
        ("x = 1  # END SOLUTION", "alone on its line"),
    ],
)
def test_bad_markers_raise_naming_notebook_and_cell(source: str, problem: str) -> None:
    nb = notebook(new_markdown_cell("intro"), executed("ok = 1"), executed(source))
    nb.cells[2]["id"] = "bad-cell"
    with pytest.raises(MarkerError) as err:
        make_exercise(nb, "solutions/99_demo_solutions.ipynb")
    message = str(err.value)
    assert problem in message
    assert "solutions/99_demo_solutions.ipynb, cell 2 (id bad-cell)" in message


def test_markdown_mentioning_markers_is_left_alone() -> None:
    text = "Solutions sit between `# BEGIN SOLUTION` and `# END SOLUTION`."
    assert make_exercise(notebook(new_markdown_cell(text))).cells[0].source == text


def make_repo(tmp_path: Path) -> Path:
    (tmp_path / "solutions").mkdir()
    source = "# BEGIN SOLUTION 9.1: set x\nx = 1\n# END SOLUTION"
    nbformat.write(notebook(executed(source)), tmp_path / "solutions" / "09_demo_solutions.ipynb")
    return tmp_path


def test_build_then_check_in_a_tmp_repo(tmp_path: Path) -> None:
    root = make_repo(tmp_path)
    target = root / "exercises" / "09_demo_exercises.ipynb"
    assert stale(root) == ["missing: exercises/09_demo_exercises.ipynb"]
    assert build(root) == [target]
    assert stale(root) == []
    assert build(root) == [], "an up-to-date build writes nothing"
    text = target.read_text(encoding="utf-8")
    assert text == render(nbformat.reads(text, as_version=4)), "output is not stable JSON"
    assert "x = 1" not in text and "Exercise 9.1: set x" in text


def test_check_detects_stale_and_extra_files(tmp_path: Path) -> None:
    root = make_repo(tmp_path)
    build(root)
    target = root / "exercises" / "09_demo_exercises.ipynb"
    target.write_text(target.read_text(encoding="utf-8").replace("set x", "set y"), "utf-8")
    (root / "exercises" / "10_orphan_exercises.ipynb").write_text("{}", encoding="utf-8")
    assert stale(root) == [
        "stale: exercises/09_demo_exercises.ipynb",
        "extra: exercises/10_orphan_exercises.ipynb (no solutions/ source)",
    ]
    cmd = [sys.executable, "-m", "course_utils.exercises", "check", "--root", str(root)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "stale: exercises/09_demo_exercises.ipynb" in result.stderr
    assert "extra: exercises/10_orphan_exercises.ipynb" in result.stderr
    build(root)
    assert stale(root) == []
    assert not (root / "exercises" / "10_orphan_exercises.ipynb").exists()


def test_cli_reports_bad_markers(tmp_path: Path) -> None:
    (tmp_path / "solutions").mkdir()
    nb = notebook(executed("# BEGIN SOLUTION 1.1: a\nx = 1"))
    nbformat.write(nb, tmp_path / "solutions" / "01_bad_solutions.ipynb")
    cmd = [sys.executable, "-m", "course_utils.exercises", "build", "--root", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "solutions/01_bad_solutions.ipynb, cell 0" in result.stderr


def test_exercise_path() -> None:
    path = ROOT / "solutions" / "03_dropout_solutions.ipynb"
    assert exercise_path(path) == ROOT / "exercises" / "03_dropout_exercises.ipynb"


# --- (c) every shipped exercise notebook fails, with NotImplementedError ------------------------


def _first_error(path: Path) -> CellExecutionError | None:
    """Run an exercise notebook in a fresh kernel up to its first error (None: no error)."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    try:
        client.execute()
    except CellExecutionError as err:
        return err
    return None


@pytest.fixture(scope="module")
def first_errors() -> dict[Path, CellExecutionError | None]:
    """Every shipped exercise notebook's first error, the kernels two at a time (each is
    mostly a kernel's start and imports, which a second core overlaps)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(EXERCISES, pool.map(_first_error, EXERCISES), strict=True))


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.name)
@pytest.mark.slow
def test_exercise_notebook_fails_with_not_implemented(
    path: Path, first_errors: dict[Path, CellExecutionError | None]
) -> None:
    error = first_errors[path]
    assert error is not None, f"{path.name} ran to the end: an exercise is not left blank"
    assert error.ename == "NotImplementedError", (
        f"{path.name}: the first error is {error.ename}: {error.evalue}; "
        "an unfinished exercise notebook must fail only with NotImplementedError"
    )
    assert error.evalue.startswith("Exercise ")


# --- (d) the solution notebooks carry outputs, and each marker becomes a blank ------------------


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_solution_notebook_is_stored_executed(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code), (
        f"{path.name} has unexecuted cells: execute it and store the outputs (nbval's reference)"
    )
    assert any(c.outputs for c in code), f"{path.name} has no stored outputs"
    assert nb.metadata.kernelspec.name == "python3"
    for cell in code:
        for output in cell.outputs:
            text = str(output.get("text", "")) + str(output.get("data", {}).get("text/plain", ""))
            assert not re.search(r"(/work/|/tmp/|/root/|/home/)", text), (
                f"{path.name}: an output holds an absolute path: {text[:200]!r}"
            )


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_every_marker_becomes_a_not_implemented_error(path: Path) -> None:
    solution = nbformat.read(path, as_version=4)
    exercise = nbformat.read(exercise_path(path), as_version=4)

    def ids(nb: nbformat.NotebookNode, pattern: re.Pattern[str]) -> list[str]:
        return sorted(
            m for c in nb.cells if c.cell_type == "code" for m in pattern.findall(c.source)
        )

    marker_ids = ids(solution, MARKER_ID)
    assert marker_ids, f"{path.name} has no BEGIN SOLUTION markers"
    assert ids(exercise, BLANK_ID) == marker_ids
    assert not any("SOLUTION" in c.source for c in exercise.cells if c.cell_type == "code")


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff is not installed")
def test_generated_exercises_are_ruff_clean() -> None:
    for args in (["check"], ["format", "--check"]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *args, "exercises"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
