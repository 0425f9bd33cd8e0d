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

Each notebook runs in a process of its own (:func:`execute_all`), only after the notebooks it
reads from (:data:`NEEDS`). Quick mode runs them in parallel lanes, one per CPU core, each with a
share of the cores: most of a quick notebook is starting a kernel and importing, which a second
core overlaps. Full mode runs one at a time with every core: its timings are findings, and on the
course's 2-core machine two lanes of full-mode chapters took as long as running them in turn.

Usage::

    python -m course_utils.build.pipeline execute [--quick] [--only 01] [--jobs 1]
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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..paths import BUILD_DIR, REPO_ROOT
from .results import record_execution_time
from .runners import RUNNERS, choose_runner, run_notebook

__all__ = [
    "NEEDS",
    "REPO",
    "build_book",
    "chapter_notebooks",
    "ensure_book",
    "execute_all",
    "execute_notebook",
    "executed_dir",
    "executed_path",
    "execution_errors",
    "is_fresh",
    "lanes",
    "next_to_start",
    "page_notebooks",
    "stage_site",
]

REPO = REPO_ROOT
BUILD = BUILD_DIR
SITE_ITEMS = ("_config.yml", "_toc.yml", "book", "exercises", "solutions", "references.bib")


# What a notebook reads from another's run (chapter 1's checkpoint, chapter 8's ONNX file, every
# chapter's metrics): it starts only after those have finished. "*": every other notebook.
NEEDS: dict[str, tuple[str, ...]] = {
    "05_visualising": ("01_baseline_cnn",),
    "06_transfer": ("01_baseline_cnn",),
    "08_export": ("01_baseline_cnn",),
    "09_serving": ("08_export",),
    "10_gradcam": ("01_baseline_cnn",),
    "serving_hardening": ("09_serving",),
    "results": ("*",),
}


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


def lanes(quick: bool) -> int:
    """How many notebooks run at a time: ``$COURSE_JOBS``, else one per CPU core in quick mode
    and one in full mode (see the module's docstring)."""
    return max(1, int(os.environ.get("COURSE_JOBS") or ((os.cpu_count() or 1) if quick else 1)))


def next_to_start(
    pending: Sequence[Path], running: Sequence[Path], finished: set[str], jobs: int
) -> Path | None:
    """The notebook to start now, or None: the first pending one whose :data:`NEEDS` have
    ``finished`` (those that are part of this run), if fewer than ``jobs`` are running."""
    names = {nb.stem for nb in (*pending, *running)} | finished
    if len(running) >= jobs:
        return None
    for notebook in pending:
        needs = NEEDS.get(notebook.stem, ())
        needs = names - {notebook.stem} if "*" in needs else set(needs) & names
        if needs <= finished:
            return notebook
    return None


def execute_all(
    notebooks: Sequence[Path],
    quick: bool,
    device: str = "auto",
    jobs: int | None = None,
    runner: str | None = None,
) -> dict[Path, str]:
    """Execute ``notebooks`` (each by :func:`execute_notebook`, in a process of its own) in
    :func:`next_to_start`'s order, up to ``jobs`` at a time (default: :func:`lanes`); with more
    than one lane, each notebook gets ``cores // jobs`` threads.

    Each process's output goes to ``<executed_dir>/logs/<name>.log``. Returns the failures:
    ``{notebook: the end of its log}``; a notebook whose needs failed is not run, and fails too.
    """
    cores, jobs = os.cpu_count() or 1, jobs or lanes(quick)
    logs = executed_dir(quick) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pending, running = list(notebooks), {}
    finished: set[str] = set()
    failures: dict[Path, str] = {}
    while pending or running:
        for notebook in [nb for nb in pending if _failed_need(nb, failures)]:
            pending.remove(notebook)
            failures[notebook] = f"not run: {_failed_need(notebook, failures)} failed"
        while notebook := next_to_start(pending, list(running), finished, jobs):
            pending.remove(notebook)
            paths = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
            if jobs > 1:  # a share of the cores (PyTorch reads these at import)
                threads = str(max(1, cores // jobs))
                env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
            cmd = [
                sys.executable,
                "-m",
                "course_utils.build.pipeline",
                "execute",
                str(notebook),
                "--device",
                device,
            ]
            cmd += ["--jobs", "1", "--build-dir", str(BUILD)] + ["--quick"] * quick
            cmd += ["--runner", runner] if runner else []
            log = (logs / f"{notebook.stem}.log").open("w")
            running[notebook] = (subprocess.Popen(cmd, stdout=log, stderr=log, env=env), log)
            print(f"started {notebook.name}", flush=True)
        if not pending and not running:
            break
        time.sleep(0.2)
        for notebook, (process, log) in list(running.items()):
            if process.poll() is None:
                continue
            log.close()
            del running[notebook]
            if process.returncode == 0:
                finished.add(notebook.stem)
            else:
                tail = (logs / f"{notebook.stem}.log").read_text(errors="replace")[-3000:]
                failures[notebook] = tail
                print(f"FAILED {notebook.name} (log: {logs / notebook.stem}.log)", flush=True)
    return failures


def _failed_need(notebook: Path, failures: dict[Path, str]) -> str | None:
    """The name of a failed notebook that ``notebook`` needs, if any."""
    needs = NEEDS.get(notebook.stem, ())
    failed = [nb.stem for nb in failures if "*" in needs or nb.stem in needs]
    return failed[0] if failed else None


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
    stale = [nb for nb in chapter_notebooks() + page_notebooks() if not is_fresh(nb, quick)]
    if failures := execute_all(stale, quick, device="cpu"):
        raise RuntimeError(f"notebooks failed: {', '.join(nb.name for nb in failures)}")
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
    global BUILD
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["execute", "book"])
    parser.add_argument("notebooks", nargs="*", type=Path, help="these notebooks only (paths)")
    parser.add_argument("--quick", action="store_true", help="CPU-friendly quick mode (CI)")
    parser.add_argument("--device", default=os.environ.get("DEVICE", "auto"))
    parser.add_argument("--only", default=None, help="run only chapters whose name starts so")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="notebooks at a time (default: $COURSE_JOBS, else one per core in quick mode, 1 in "
        "full mode); 1 runs them in this process, with progress bars",
    )
    parser.add_argument("--build-dir", type=Path, default=BUILD, help="default: _build")
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
    args = parser.parse_intermixed_args(argv)
    quick = args.quick or os.environ.get("QUICK", "") not in ("", "0")
    BUILD = args.build_dir
    notebooks = [
        nb
        for nb in args.notebooks or chapter_notebooks() + page_notebooks()
        if not (args.only and not nb.name.startswith(args.only))
        and not (args.command == "book" and args.reuse and is_fresh(nb, quick))
    ]
    start, jobs = time.perf_counter(), args.jobs or lanes(quick)
    if jobs == 1:  # one after the other in NEEDS order, in this process, with progress bars
        pending, finished = list(notebooks), set()
        while notebook := next_to_start(pending, [], finished, jobs=1):
            execute_notebook(notebook, quick, args.device, progress=True, runner=args.runner)
            pending.remove(notebook)
            finished.add(notebook.stem)
    elif failures := execute_all(notebooks, quick, args.device, jobs, args.runner):
        for notebook, tail in failures.items():
            print(f"\n--- {notebook.name} failed; the end of its log:\n{tail}", file=sys.stderr)
        raise SystemExit(f"{len(failures)} notebook(s) failed: see above")
    if notebooks:
        print(f"executed {len(notebooks)} notebook(s) in {time.perf_counter() - start:.0f} s")
    if args.command == "book":
        build_book(quick)


if __name__ == "__main__":
    main()
