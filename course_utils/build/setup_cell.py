"""The setup cell at the top of every chapter, solution and exercise notebook: one source, synced.

Colab (and any Jupyter without the course) opens a notebook from the repository with nothing of
the course installed. The cell below, placed right after each notebook's title and hidden from
the book (``remove-cell``), does nothing where ``import course_utils`` works; elsewhere it

1. installs the course from the repository's archive (``repository.url`` + ``repository.branch``
   of ``_config.yml``, baked into the cell here because Colab has no ``_config.yml``), or from
   ``$COURSE_INSTALL_SOURCE`` (a folder, a wheel or another URL), without its dependencies;
2. adds the dependencies that are not installed at all. Installed ones are kept as they are, and
   torch/torchvision are held at their installed versions while the others are added, so Colab's
   own torch build stays and nothing of several GB is downloaded;
3. fetches and verifies Fashion-MNIST (``python -m course_utils.data``) into ``data/`` next to
   the notebook (see :mod:`course_utils.paths`);
4. prints one line saying what it did; ``import course_utils`` then works in the same kernel.

Its code is one function, called and deleted, so it leaves no name behind in the notebook (a
chapter that forgets an import still fails where it should).

Usage::

    python -m course_utils.build.setup_cell sync    # insert or update the cell everywhere
    python -m course_utils.build.setup_cell check   # exit 1, naming each notebook that is stale

``sync`` is idempotent and touches nothing but the setup cell, so it can be re-run at any time.
Solution notebooks store the cell's output (strict nbval compares it): the "nothing to set up"
line, which is what the cell prints wherever the course is installed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
import yaml
from nbformat import NotebookNode

from ..paths import REPO_ROOT
from .exercises import render

__all__ = [
    "CELL_ID",
    "ENV_VAR",
    "METADATA",
    "NOTHING_TO_DO",
    "TAGS",
    "archive_url",
    "cell_source",
    "check",
    "notebooks",
    "repository",
    "sync",
]

CELL_ID = "course-setup"
TAGS = ["remove-cell"]
# Folded where the learner works: JupyterLab collapses the code (``jupyter.source_hidden``) and
# Colab shows the ``@title`` line as a form (``cellView``); one click opens it.
METADATA = {"tags": TAGS, "jupyter": {"source_hidden": True}, "cellView": "form"}
ENV_VAR = "COURSE_INSTALL_SOURCE"
NOTHING_TO_DO = "course_utils is installed: nothing to set up."
FOLDERS = {  # folder → glob of the notebooks that carry the cell
    "notebooks": "[0-9][0-9]_*.ipynb",
    "solutions": "*_solutions.ipynb",
    "exercises": "*_exercises.ipynb",
}

TEMPLATE = r'''
# @title Course setup (Colab, Binder): does nothing where course_utils imports
# Setup for Colab, Binder or any Jupyter without the course: installs the course's
# package, course_utils, and fetches Fashion-MNIST. Does nothing where it imports.
# To install from elsewhere, set COURSE_INSTALL_SOURCE (a folder, a wheel or a URL).
def _setup_course() -> None:
    import importlib
    import os
    import re
    import subprocess
    import sys
    from importlib import metadata

    repository = "<REPOSITORY>"
    archive = f"{repository}/archive/refs/heads/<BRANCH>.zip"
    source = os.environ.get("COURSE_INSTALL_SOURCE", archive)
    try:
        import course_utils  # noqa: F401

        print("course_utils is installed: nothing to set up.")
        return
    except ImportError:
        pass

    def run(*command: str) -> None:
        """Run a command quietly; if it fails, stop with what it printed."""
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(
                f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}"
            )

    def name(requirement: str) -> str:
        """The package a requirement names: "Scikit_Learn>=1.4" -> "scikit-learn"."""
        return re.sub(r"[-_.]+", "-", re.match(r"[\w.-]*", requirement)[0]).lower()

    # The course without its dependencies, then those not installed at all: what the
    # machine has is kept, torch/torchvision at their versions (no download of GBs).
    have = {name(d.metadata["Name"] or "") for d in metadata.distributions()}
    pip = [sys.executable, "-m", "pip", "install"]
    run(*pip, "--no-deps", source)
    importlib.invalidate_caches()
    needs = [r for r in metadata.requires("course_utils") if "extra ==" not in r]
    add = [r for r in needs if name(r) not in have]
    held = [f"{n}=={metadata.version(n)}" for n in have & {"torch", "torchvision"}]
    if add:
        run(*pip, *add, *held)
    run(sys.executable, "-m", "course_utils.data")
    importlib.invalidate_caches()
    from course_utils.data import default_data_dir

    print(
        f"Installed course_utils from {source} (+{len(add)} packages, torch "
        f"{metadata.version('torch')}); data in {default_data_dir()}"
    )


_setup_course()
del _setup_course
'''.strip()
"""The cell's code; ``<REPOSITORY>`` and ``<BRANCH>`` are filled in from ``_config.yml``."""


def repository(root: Path | None = None) -> tuple[str, str]:
    """``(url, branch)`` from ``_config.yml``'s ``repository`` section, the url without a slash."""
    config = yaml.safe_load(((root or REPO_ROOT) / "_config.yml").read_text(encoding="utf-8"))
    repo = config.get("repository") or {}
    url, branch = str(repo.get("url", "")).rstrip("/"), str(repo.get("branch") or "main")
    if not url.startswith("https://"):
        raise ValueError(f"_config.yml: repository.url must be an https:// URL, got {url!r}")
    return url, branch


def archive_url(url: str, branch: str) -> str:
    """The archive of ``branch`` that ``pip install`` accepts (GitHub's URL scheme)."""
    return f"{url}/archive/refs/heads/{branch}.zip"


def cell_source(root: Path | None = None) -> str:
    """The setup cell's code, with the repository and branch of ``_config.yml`` baked in."""
    url, branch = repository(root)
    return TEMPLATE.replace("<REPOSITORY>", url).replace("<BRANCH>", branch)


def notebooks(root: Path | None = None) -> list[Path]:
    """Every notebook that carries the cell: chapters, solutions and exercises, sorted."""
    root = root or REPO_ROOT
    return sorted(p for folder, pattern in FOLDERS.items() for p in (root / folder).glob(pattern))


def _position(nb: NotebookNode) -> int:
    """Where the cell goes: right after the title cell (a markdown first cell), else first."""
    return 1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0


def _outputs(path: Path) -> list[NotebookNode]:
    """What the cell's stored outputs must be: the "nothing to set up" line in solutions/ (their
    outputs are strict nbval's reference), none elsewhere (those are stored without outputs)."""
    if path.parent.name != "solutions":
        return []
    return [nbformat.v4.new_output("stream", name="stdout", text=NOTHING_TO_DO + "\n")]


def _plain(outputs: list) -> list[tuple[str, str, str]]:
    return [(o.get("output_type"), o.get("name", ""), "".join(o.get("text", ""))) for o in outputs]


def _cell(source: str, outputs: list[NotebookNode], old: NotebookNode | None) -> NotebookNode:
    """The current cell; an old one whose source, tags and outputs match is kept as it is (its
    execution count included), so that ``sync`` changes nothing that is already right."""
    if (
        old is not None
        and old.source == source
        and dict(old.metadata) == METADATA
        and _plain(old.get("outputs", [])) == _plain(outputs)
        and (old.get("execution_count") is not None) == bool(outputs)
    ):
        return old
    metadata = {**METADATA, "tags": list(TAGS), "jupyter": dict(METADATA["jupyter"])}
    cell = nbformat.v4.new_code_cell(source, metadata=metadata, id=CELL_ID)
    cell.outputs = outputs
    if outputs:  # a stored output comes from a run: solutions/ are stored executed
        cell.execution_count = 1
    return cell


def _problem(path: Path, source: str) -> str | None:
    """Why ``path`` does not carry the current cell where it belongs, or ``None``."""
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    at = _position(nb)
    cell = nb.cells[at] if len(nb.cells) > at else None
    if cell is None or cell.get("id") != CELL_ID:
        return "no setup cell right after the title"
    if cell.source != source:
        return "the setup cell's code is not the current one"
    if dict(cell.metadata) != METADATA:
        return f"the setup cell's metadata is {dict(cell.metadata)}, not {METADATA}"
    if _plain(cell.get("outputs", [])) != _plain(_outputs(path)):
        return "the setup cell's stored output is not the expected one"
    if sum(c.get("id") == CELL_ID for c in nb.cells) != 1:
        return "more than one setup cell"
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
        nb.cells.insert(_position(nb), _cell(source, _outputs(path), old))
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
