"""The setup cell at the top of every chapter, solution and exercise notebook: one source, synced.

Colab (and any Jupyter without the course) opens a notebook from the repository with nothing of
the course installed. The cell, right after each notebook's title and hidden from the book
(``remove-cell``), does nothing where ``import course_utils`` works; elsewhere it runs one
``%pip install`` of the course's archive on GitHub (``repository.url`` + ``branch`` of
``_config.yml``, baked in because Colab has no ``_config.yml``) with the ``chapters`` extra: what
the chapters run, no book build, no server. pip keeps an installed torch that fits the bounds
(Colab's own build). The data needs no step of its own: each chapter's first data call fetches
and verifies it.

Usage::

    python -m course_utils.build.setup_cell sync    # insert or update the cell everywhere
    python -m course_utils.build.setup_cell check   # exit 1, naming each notebook that is stale
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import nbformat
import yaml
from nbformat import NotebookNode

from ..paths import REPO_ROOT
from .exercises import render

__all__ = ["CELL_ID", "ENV_VAR", "METADATA", "cell_source", "check", "notebooks", "sync"]

CELL_ID = "course-setup"
# Folded where the learner works: JupyterLab collapses the code (``jupyter.source_hidden``) and
# Colab shows the ``@title`` line as a form (``cellView``); one click opens it.
METADATA = {"tags": ["remove-cell"], "jupyter": {"source_hidden": True}, "cellView": "form"}
ENV_VAR = "COURSE_INSTALL_SOURCE"
FOLDERS = {  # folder → glob of the notebooks that carry the cell
    "notebooks": "[0-9][0-9]_*.ipynb",
    "solutions": "*_solutions.ipynb",
    "exercises": "*_exercises.ipynb",
}

TEMPLATE = """\
# @title Course setup (Colab, Binder): installs the course where it is missing,
# with what the chapters run (`[chapters]`); an installed torch that fits is kept.
try:
    import course_utils  # noqa: F401
except ModuleNotFoundError:
    import os

    repo = "<REPOSITORY>"
    source = os.environ.get("COURSE_INSTALL_SOURCE", f"{repo}/archive/<BRANCH>.zip")
    %pip install --quiet "course_utils[chapters] @ {source}\""""
"""The cell's code; ``<REPOSITORY>`` and ``<BRANCH>`` are filled in from ``_config.yml``."""


def repository(root: Path | None = None) -> tuple[str, str]:
    """``(url, branch)`` from ``_config.yml``'s ``repository`` section, the url without a slash."""
    config = yaml.safe_load(((root or REPO_ROOT) / "_config.yml").read_text(encoding="utf-8"))
    repo = config.get("repository") or {}
    url, branch = str(repo.get("url", "")).rstrip("/"), str(repo.get("branch") or "main")
    if not url.startswith("https://"):
        raise ValueError(f"_config.yml: repository.url must be an https:// URL, got {url!r}")
    return url, branch


def cell_source(root: Path | None = None) -> str:
    """The setup cell's code, with the archive of ``_config.yml``'s repository baked in."""
    url, branch = repository(root)
    return TEMPLATE.replace("<REPOSITORY>", url).replace("<BRANCH>", branch)


def notebooks(root: Path | None = None) -> list[Path]:
    """Every notebook that carries the cell: chapters, solutions and exercises, sorted."""
    root = root or REPO_ROOT
    return sorted(p for folder, pattern in FOLDERS.items() for p in (root / folder).glob(pattern))


def _position(nb: NotebookNode) -> int:
    """Where the cell goes: right after the title cell (a markdown first cell), else first."""
    return 1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0


def _count(path: Path) -> int | None:
    """The cell's stored execution count: solutions/ are stored executed (strict nbval's
    reference; the cell ran and printed nothing), the other notebooks without outputs."""
    return 1 if path.parent.name == "solutions" else None


def _is_current(cell: NotebookNode, source: str, count: int | None) -> bool:
    return (
        cell.source == source
        and dict(cell.metadata) == METADATA
        and not cell.get("outputs")
        and cell.get("execution_count") == count
    )


def _problem(path: Path, source: str) -> str | None:
    """Why ``path`` does not carry the current cell where it belongs, or ``None``."""
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    at = _position(nb)
    if len(nb.cells) <= at or nb.cells[at].get("id") != CELL_ID:
        return "no setup cell right after the title"
    if sum(c.get("id") == CELL_ID for c in nb.cells) != 1:
        return "more than one setup cell"
    if not _is_current(nb.cells[at], source, _count(path)):
        return "the setup cell is not the current one (code, metadata, or a stored output)"
    return None


def sync(root: Path | None = None) -> list[Path]:
    """Insert or update the setup cell in every notebook; returns the files rewritten."""
    root = root or REPO_ROOT
    source = cell_source(root)
    changed = []
    for path in notebooks(root):
        text = path.read_text(encoding="utf-8")
        nb = nbformat.reads(text, as_version=nbformat.NO_CONVERT)
        old = next((c for c in nb.cells if c.get("id") == CELL_ID), None)
        nb.cells = [c for c in nb.cells if c.get("id") != CELL_ID]
        if old is None or not _is_current(old, source, _count(path)):
            old = nbformat.v4.new_code_cell(source, metadata=copy.deepcopy(METADATA), id=CELL_ID)
            old.execution_count = _count(path)
        nb.cells.insert(_position(nb), old)
        new = render(nb)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(path)
    return changed


def check(root: Path | None = None) -> list[str]:
    """One line per notebook that does not carry the current cell; empty when all do."""
    root = root or REPO_ROOT
    source = cell_source(root)
    found = notebooks(root)
    problems = [
        f"{path.relative_to(root)}: {why}"
        for path in found
        if (why := _problem(path, source)) is not None
    ]
    if not found:
        problems.append(f"no notebooks found under {root}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m course_utils.build.setup_cell",
        description="Keep the Colab/Binder setup cell of every notebook current.",
    )
    parser.add_argument("command", choices=["sync", "check"])
    parser.add_argument("--root", type=Path, default=None, help="repository root")
    args = parser.parse_args(argv)
    root = args.root or REPO_ROOT
    if args.command == "sync":
        for path in sync(root):
            print(f"updated {path.relative_to(root)}")
        print(f"the setup cell is current in {len(notebooks(root))} notebooks")
        return 0
    problems = check(root)
    if problems:
        print("notebooks without the current setup cell:", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        print("run: python -m course_utils.build.setup_cell sync", file=sys.stderr)
        return 1
    print(f"the setup cell is current in {len(notebooks(root))} notebooks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
