"""Generate the exercise notebooks from the solution notebooks, and check that they are in sync.

``solutions/NN_topic_solutions.ipynb`` is the single source. In its code cells, each block ::

    # BEGIN SOLUTION 1.2: write the evaluation loop
    ...the solution...
    # END SOLUTION

becomes, at the indentation of the ``BEGIN`` line, ::

    # YOUR CODE HERE
    raise NotImplementedError("Exercise 1.2: write the evaluation loop")

Cells tagged ``solution-only`` (discussion of the answers, say) are dropped. The exercise keeps
every other cell, its tags (``nbval-*`` included) and the notebook metadata, loses all outputs and
execution counts, and is written to ``exercises/NN_topic_exercises.ipynb`` as deterministic JSON.

Usage::

    python -m course_utils.exercises build    # (re)write exercises/ from solutions/
    python -m course_utils.exercises check    # exit 1, naming the stale files
    python -m course_utils.exercises execute [--only 02]  # re-run solutions/, then build
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from ..paths import REPO_ROOT

__all__ = [
    "SOLUTION_ONLY_TAG",
    "MarkerError",
    "build",
    "execute_solutions",
    "exercise_path",
    "make_exercise",
    "render",
    "solution_notebooks",
    "stale",
    "strip_solutions",
]

SOLUTION_ONLY_TAG = "solution-only"
BEGIN = re.compile(r"^(?P<indent>[ \t]*)# BEGIN SOLUTION(?P<rest>.*)$")
BEGIN_FULL = re.compile(r"^ (?P<id>[0-9A-Za-z][\w.-]*): (?P<instruction>\S.*?)\s*$")
END = re.compile(r"^[ \t]*# END SOLUTION\s*$")
# Cell metadata that records one particular execution, not the notebook's content.
RUN_METADATA = ("execution", "ExecuteTime", "collapsed", "scrolled")
LINE_LENGTH = 88  # ruff line-length of book pages (exercises/ruff.toml): longer raise lines wrap


class MarkerError(ValueError):
    """A solution notebook has a malformed, unbalanced or nested ``BEGIN/END SOLUTION`` marker."""


def _raise_lines(indent: str, exercise_id: str, instruction: str) -> list[str]:
    """The replacement for one solution block, formatted as ``ruff format`` would leave it."""
    message = f"Exercise {exercise_id}: {instruction}"
    quote = "'" if '"' in message and "'" not in message else '"'
    literal = quote + message.replace("\\", "\\\\").replace(quote, "\\" + quote) + quote
    one_line = f"{indent}raise NotImplementedError({literal})"
    if len(one_line) <= LINE_LENGTH:
        body = [one_line]
    else:
        body = [f"{indent}raise NotImplementedError(", f"{indent}    {literal}", f"{indent})"]
    return [f"{indent}# YOUR CODE HERE", *body]


def strip_solutions(source: str, where: str = "<cell>") -> str:
    """Replace every ``BEGIN/END SOLUTION`` block of one code cell's source.

    Args:
        source: the cell's code.
        where: notebook and cell, for error messages.

    Raises:
        MarkerError: a marker is malformed, nested, or has no partner.
    """
    out: list[str] = []
    open_at: int | None = None  # line number of the open BEGIN
    for number, line in enumerate(source.split("\n"), start=1):
        if begin := BEGIN.match(line):
            if open_at is not None:
                raise MarkerError(
                    f"{where}: nested BEGIN SOLUTION at line {number} "
                    f"(the block opened at line {open_at} has no END SOLUTION yet)"
                )
            full = BEGIN_FULL.match(begin["rest"])
            if full is None:
                raise MarkerError(
                    f"{where}, line {number}: write the marker as "
                    f"'# BEGIN SOLUTION <id>: <instruction>', got {line.strip()!r}"
                )
            open_at = number
            out += _raise_lines(begin["indent"], full["id"], full["instruction"])
        elif END.match(line):
            if open_at is None:
                raise MarkerError(
                    f"{where}: END SOLUTION at line {number} without a BEGIN SOLUTION"
                )
            open_at = None
        elif "# BEGIN SOLUTION" in line or "# END SOLUTION" in line:
            raise MarkerError(f"{where}, line {number}: a marker must be alone on its line")
        elif open_at is None:
            out.append(line)
    if open_at is not None:
        raise MarkerError(f"{where}: BEGIN SOLUTION at line {open_at} has no END SOLUTION")
    return "\n".join(out)


def make_exercise(nb: NotebookNode, name: str = "<notebook>") -> NotebookNode:
    """The exercise version of solution notebook ``nb`` (a new notebook; ``nb`` is unchanged).

    Args:
        nb: the solution notebook.
        name: its name, used in error messages.

    Raises:
        MarkerError: naming the notebook and cell of a bad marker.
    """
    exercise = copy.deepcopy(nb)
    cells = []
    for index, cell in enumerate(exercise.cells):
        if SOLUTION_ONLY_TAG in cell.get("metadata", {}).get("tags", []):
            continue
        for key in RUN_METADATA:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell_id = f" (id {cell['id']})" if "id" in cell else ""
            cell.source = strip_solutions(cell.source, f"{name}, cell {index}{cell_id}")
            cell.outputs = []
            cell.execution_count = None
        cells.append(cell)
    exercise.cells = cells
    return exercise


def render(nb: NotebookNode) -> str:
    """The notebook as the exact text written to disk (``nbformat``'s stable JSON, one newline)."""
    return nbformat.writes(nb, version=nbformat.NO_CONVERT).rstrip("\n") + "\n"


def _default_root() -> Path:
    return REPO_ROOT if (REPO_ROOT / "pyproject.toml").exists() else Path.cwd()


def solution_notebooks(root: Path | None = None) -> list[Path]:
    """The sources: ``<root>/solutions/*_solutions.ipynb``, sorted."""
    root = Path(root) if root is not None else _default_root()
    return sorted((root / "solutions").glob("*_solutions.ipynb"))


def exercise_path(solution: Path) -> Path:
    """``solutions/NN_topic_solutions.ipynb`` → ``exercises/NN_topic_exercises.ipynb``."""
    stem = solution.name.removesuffix("_solutions.ipynb")
    return solution.parent.parent / "exercises" / f"{stem}_exercises.ipynb"


def _expected(root: Path) -> dict[Path, str]:
    """Each exercise file that should exist, with its exact text."""
    expected = {}
    for solution in solution_notebooks(root):
        nb = nbformat.read(solution, as_version=nbformat.NO_CONVERT)
        name = str(solution.relative_to(root))
        expected[exercise_path(solution)] = render(make_exercise(nb, name))
    return expected


def _extra(root: Path, expected: dict[Path, str]) -> list[Path]:
    """Notebooks in ``exercises/`` that no solution notebook generates."""
    return sorted(p for p in (root / "exercises").glob("*.ipynb") if p not in expected)


def build(root: Path | None = None) -> list[Path]:
    """Write every exercise notebook that is missing or out of date, and remove extra ones.

    Returns:
        The exercise files written or removed.
    """
    root = Path(root) if root is not None else _default_root()
    expected = _expected(root)
    changed = []
    for path, text in expected.items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    for path in _extra(root, expected):
        path.unlink()
        changed.append(path)
    return changed


def execute_solutions(
    root: Path | None = None, timeout: int = 600, only: str | None = None
) -> list[Path]:
    """Re-run each solution notebook in place (cwd ``solutions/``), storing fresh outputs.

    Those outputs are strict nbval's reference. ``language_info`` is reset to ``{"name":
    "python"}`` so that the Python version of whoever ran it does not leak into the exercises.
    """
    from nbclient import NotebookClient

    paths = [p for p in solution_notebooks(root) if only is None or p.name.startswith(only)]
    for path in paths:
        nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            record_timing=False,
            resources={"metadata": {"path": str(path.parent)}},
        )
        client.execute()
        nb.metadata["language_info"] = {"name": "python"}
        path.write_text(render(nb), encoding="utf-8")
        print(f"executed {path.name}")
    return paths


def stale(root: Path | None = None) -> list[str]:
    """Problems with ``exercises/``, one line each (``missing: …``, ``stale: …``, ``extra: …``).

    Empty when every exercise notebook is exactly what ``build`` would write.
    """
    root = Path(root) if root is not None else _default_root()
    expected = _expected(root)
    problems = []
    for path, text in expected.items():
        rel = path.relative_to(root)
        if not path.exists():
            problems.append(f"missing: {rel}")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"stale: {rel}")
    problems += [
        f"extra: {p.relative_to(root)} (no solutions/ source)" for p in _extra(root, expected)
    ]
    return problems


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m course_utils.exercises",
        description="Generate exercises/ from the solution notebooks in solutions/.",
    )
    parser.add_argument(
        "command",
        choices=["build", "check", "execute"],
        help="build: (re)write exercises/; check: exit 1 if it is stale; "
        "execute: re-run solutions/ in place, then build",
    )
    parser.add_argument(
        "--root", type=Path, default=None, help="repository root (default: this one)"
    )
    parser.add_argument(
        "--only", default=None, help="execute: only solutions whose name starts so (e.g. 02)"
    )
    args = parser.parse_args(argv)
    root = args.root or _default_root()
    try:
        if args.command == "execute":
            execute_solutions(root, only=args.only)
        if args.command in ("build", "execute"):
            changed = build(root)
            for path in changed:
                verb = "wrote" if path.exists() else "removed"
                print(f"{verb} {path.relative_to(root)}")
            print(f"exercises/ is up to date ({len(solution_notebooks(root))} notebooks)")
            return 0
        problems = stale(root)
    except MarkerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if problems:
        print("exercises/ is out of sync with solutions/:", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        print("run: python -m course_utils.exercises build", file=sys.stderr)
        return 1
    print(f"exercises/ is in sync ({len(solution_notebooks(root))} notebooks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
