"""The build pipeline: papermill executes the chapters, jupyter-book renders the executed copies.

Where papermill is missing (a GPU machine's own image), the chapters run through a fallback
runner instead (nbclient, or a plain in-process runner; see :mod:`.runners`), with the same
parameters, metrics and execution times; ``--runner`` or ``$COURSE_NOTEBOOK_RUNNER`` forces one.

Sources are never executed in place. Each chapter runs once per build into
``_build/executed/<mode>/notebooks/``, then the executable book pages (``book/*.ipynb``: the cheat
sheet, the results page that reads the chapters' metrics) into ``_build/executed/<mode>/book/``.
The site is assembled in ``_build/site_src/`` from those copies plus the other book pages,
exercises and solutions, and built with execution off and Sphinx warnings as errors into
``_build/html``.

Usage::

    python -m course_utils.build.pipeline execute [--quick] [--only 01]
    python -m course_utils.build.pipeline book [--quick] [--reuse]
    python -m course_utils.build.pipeline execute --quick --only 04 --runner inprocess
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..paths import BUILD_DIR, REPO_ROOT
from .results import record_execution_time
from .runners import RUNNERS, choose_runner, run_notebook

__all__ = [
    "REPO",
    "build_book",
    "chapter_notebooks",
    "ensure_book",
    "execute_notebook",
    "executed_dir",
    "executed_path",
    "execution_errors",
    "is_fresh",
    "page_notebooks",
    "stage_site",
]

REPO = REPO_ROOT
BUILD = BUILD_DIR
SITE_ITEMS = ("_config.yml", "_toc.yml", "book", "exercises", "solutions", "references.bib")


def chapter_notebooks() -> list[Path]:
    """The chapter notebooks, in order."""
    return sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def page_notebooks() -> list[Path]:
    """The executable book pages, run after the chapters (the results page reads their metrics)."""
    return sorted((REPO / "book").glob("*.ipynb"))


def executed_dir(quick: bool) -> Path:
    """Where executed copies go for this mode (``notebooks/`` and ``book/`` below it)."""
    return BUILD / "executed" / ("quick" if quick else "full")


def executed_path(notebook: Path, quick: bool) -> Path:
    """The executed copy of ``notebook`` for this mode."""
    return executed_dir(quick) / notebook.parent.name / notebook.name


def execute_notebook(
    notebook: Path,
    quick: bool,
    device: str = "auto",
    progress: bool = False,
    runner: str | None = None,
) -> Path:
    """Run one notebook (parameters ``QUICK`` and ``DEVICE``) into the build folder.

    The notebook runs with its own folder as working directory, exactly as in JupyterLab.
    ``runner`` is ``"papermill"``, ``"nbclient"`` or ``"inprocess"`` (default:
    ``$COURSE_NOTEBOOK_RUNNER``, else the first installed, see :func:`.runners.choose_runner`);
    the executed copy's metadata ``course_runner`` names it. If a cell fails, the copy is
    written with the error and the runner's execution error (papermill's
    ``PapermillExecutionError``, else :class:`.runners.NotebookExecutionError`) is raised.
    """
    runner = choose_runner(runner)
    out = executed_path(notebook, quick)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with _kernel_environment():
        run_notebook(
            notebook,
            out,
            {"QUICK": quick, "DEVICE": device},
            cwd=notebook.parent,
            runner=runner,
            progress=progress,
        )
    seconds = time.perf_counter() - start
    _hide_parameter_cells(out, keep_defaults=notebook.parent.name != "book")
    record_execution_time(notebook.stem, seconds, quick)
    mode = "quick" if quick else "full"
    print(f"executed {notebook.name} ({mode}) with {runner} in {seconds:.1f} s")
    return out


# The kernel inherits this process's environment. What it must not inherit, whoever calls:
# MPLBACKEND (``import streamlit`` sets it to Agg, and then ``plt.show()`` draws nothing in the
# kernel); what it must have: TQDM_DISABLE (a progress bar is dead weight on a static page).
KERNEL_ENV_REMOVED = ("MPLBACKEND",)
# PYTHONPATH gains the repository root, so a kernel finds course_utils on a machine where the
# course is not pip-installed (a GPU image run with the fallback runners).
KERNEL_ENV_SET = {"TQDM_DISABLE": "1"}


@contextmanager
def _kernel_environment() -> Iterator[None]:
    """Set and remove the variables above for the kernels started inside the block."""
    saved = {k: os.environ.get(k) for k in (*KERNEL_ENV_REMOVED, *KERNEL_ENV_SET, "PYTHONPATH")}
    for key in KERNEL_ENV_REMOVED:
        os.environ.pop(key, None)
    os.environ.update(KERNEL_ENV_SET)
    paths = [str(REPO), *filter(None, (saved["PYTHONPATH"] or "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _hide_parameter_cells(path: Path, keep_defaults: bool) -> None:
    """Tag papermill's injected-parameters cell ``remove-cell`` (the reader sees the defaults,
    not what the build injected); on reference pages (``keep_defaults=False``) also the
    parameters cell itself. (Plain JSON, so it needs no Jupyter package.)"""
    hidden = {"injected-parameters"} if keep_defaults else {"parameters", "injected-parameters"}
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if hidden & set(tags) and "remove-cell" not in tags:
            tags.append("remove-cell")
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def stage_site(quick: bool) -> Path:
    """Assemble the book sources with executed chapters in ``_build/site_src``."""
    site = BUILD / "site_src"
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    for item in SITE_ITEMS:
        src = REPO / item
        if src.is_dir():
            shutil.copytree(src, site / item, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        elif src.is_file():
            shutil.copy2(src, site / item)
    (site / "notebooks").mkdir()
    for notebook in chapter_notebooks() + page_notebooks():
        done = executed_path(notebook, quick)
        if done.exists() and (errors := execution_errors(done)):
            raise RuntimeError(
                f"{done} holds a failed execution ({errors[0]}); fix the notebook and run "
                f"`python -m course_utils.build.pipeline execute{' --quick' if quick else ''}`"
            )
        if not done.exists():
            raise FileNotFoundError(
                f"{done} is missing: run `python -m course_utils.build.pipeline execute"
                f"{' --quick' if quick else ''}` first"
            )
        shutil.copy2(done, site / notebook.parent.name / notebook.name)
    from .web_model import stage_model  # "Try the model": chapter 8's ONNX file into models/

    stage_model(site, quick)
    return site


def build_book(quick: bool) -> Path:
    """Build ``_build/html`` from the staged site (execution off, warnings are errors)."""
    site = stage_site(quick)
    # A fresh html folder: Sphinx's incremental build would keep pages dropped from the TOC and
    # skip extra files added since the last build.
    shutil.rmtree(BUILD / "html", ignore_errors=True)
    cmd = [
        str(Path(sys.executable).parent / "jupyter-book"),
        "build",
        str(site),
        "--path-output",
        str(REPO),
        "--warningiserror",
        "--keep-going",
    ]
    subprocess.run(cmd, check=True, cwd=REPO)
    index = BUILD / "html" / "index.html"
    print(f"\nThe book is built: open file://{index}")
    return index


def ensure_book(quick: bool) -> Path:
    """Execute whatever has no fresh executed copy, then build the book; returns its index."""
    for notebook in chapter_notebooks() + page_notebooks():
        if not is_fresh(notebook, quick):
            execute_notebook(notebook, quick, device="cpu")
    return build_book(quick)


def is_fresh(notebook: Path, quick: bool) -> bool:
    """Whether the executed copy of ``notebook`` exists, is newer than its source, and ran
    without an error (papermill writes the copy also when a cell fails)."""
    done = executed_path(notebook, quick)
    return (
        done.exists()
        and done.stat().st_mtime > notebook.stat().st_mtime
        and not execution_errors(done)
    )


def execution_errors(executed: Path) -> list[str]:
    """The errors recorded in an executed copy: every error output, as ``"ErrorName: message"``
    lines, and papermill's or the fallback runner's exception flag (empty: it ran cleanly)."""
    nb = json.loads(executed.read_text(encoding="utf-8"))
    errors = [
        f"{out.get('ename', 'Error')}: {out.get('evalue', '')}"
        for cell in nb["cells"]
        if cell.get("cell_type") == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    metadata = nb.get("metadata", {})
    for key in ("papermill", "course_runner"):
        if metadata.get(key, {}).get("exception") and not errors:
            errors.append(f"{key} recorded an exception")
    return errors


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["execute", "book"])
    parser.add_argument("--quick", action="store_true", help="CPU-friendly quick mode (CI)")
    parser.add_argument("--device", default=os.environ.get("DEVICE", "auto"))
    parser.add_argument("--only", default=None, help="run only chapters whose name starts so")
    parser.add_argument(
        "--reuse", action="store_true", help="book: reuse executed copies newer than their source"
    )
    parser.add_argument(
        "--runner",
        choices=["auto", *RUNNERS],
        default=None,
        help="notebook runner (default: $COURSE_NOTEBOOK_RUNNER, else papermill if installed, "
        "else nbclient, else inprocess)",
    )
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get("QUICK", "") not in ("", "0")

    timings = {}
    for notebook in chapter_notebooks() + page_notebooks():
        if args.only and not notebook.name.startswith(args.only):
            continue
        if args.command == "book" and args.reuse and is_fresh(notebook, quick):
            continue
        start = time.perf_counter()
        execute_notebook(notebook, quick, args.device, progress=True, runner=args.runner)
        timings[notebook.name] = time.perf_counter() - start
    if timings:
        print("execution times: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    if args.command == "book":
        build_book(quick)


if __name__ == "__main__":
    main()
