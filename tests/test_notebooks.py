"""Every chapter and every executable book page runs in quick mode (one test each), all executed
once, as `make book` does, in the pipeline's parallel lanes; then the book builds from those
executed copies.

The book test comes last in this file so it reuses the executed copies; run on its own, it
executes whatever is missing first.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from course_utils.build import pipeline
from course_utils.metrics import metrics_dir

pytestmark = pytest.mark.slow  # executes every notebook

CHAPTERS = pipeline.chapter_notebooks()
PAGES = pipeline.page_notebooks()


def _errors(path: Path) -> list[dict]:
    executed = nbformat.read(path, as_version=4)
    return [
        o
        for c in executed.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]


@pytest.fixture(scope="module")
def quick_run() -> dict[Path, str]:
    """Every chapter and page executed by the pipeline in quick mode: the failures, by notebook.

    A record left by an earlier run must not pass, so the chapters' records are removed first.
    The caller has ``MPLBACKEND=Agg`` set (as ``import streamlit`` does): the pipeline owns the
    kernel's environment, so every figure must still be in the executed copies."""
    for notebook in CHAPTERS:
        (metrics_dir(quick=True) / f"{notebook.stem}.json").unlink(missing_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MPLBACKEND", "Agg")
        return pipeline.execute_all(CHAPTERS + PAGES, quick=True, device="cpu")


def test_there_are_chapters() -> None:
    """The pipeline finds the chapters (an empty glob would make the tests below vacuous)."""
    assert [p.name for p in CHAPTERS][:1] == ["01_baseline_cnn.ipynb"]


def _images(nb: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in o.get("data", {})
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
    )


def _figure_calls(nb: nbformat.NotebookNode) -> int:
    """How many figures the source asks to show: ``plt.show()`` calls in code cells."""
    return sum(c.source.count("plt.show()") for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("notebook", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_runs_in_quick_mode(notebook: Path, quick_run: dict[Path, str]) -> None:
    """papermill ran the chapter with QUICK=True; it recorded fresh metrics, left no errors,
    and every figure it shows is in the executed copy (see ``quick_run``)."""
    assert notebook not in quick_run, quick_run.get(notebook)
    out = pipeline.executed_path(notebook, quick=True)
    assert not _errors(out)
    executed = nbformat.read(out, as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "QUICK = True" in injected[0].source
    wanted = _figure_calls(nbformat.read(notebook, as_version=4))
    assert wanted >= 1, "a chapter shows at least one figure"
    assert _images(executed) >= wanted, f"{_images(executed)} figures rendered, {wanted} shown"
    record = json.loads((metrics_dir(quick=True) / f"{notebook.stem}.json").read_text())
    assert record["mode"] == "quick"
    assert record["metrics"], "the chapter recorded no headline metrics"


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_book_page_runs(page: Path, quick_run: dict[Path, str]) -> None:
    """Each executable book page (the results page after every chapter) ran without errors."""
    assert page not in quick_run, quick_run.get(page)
    assert not _errors(pipeline.executed_path(page, quick=True))


def test_book_builds_from_executed_copies() -> None:
    """jupyter-book builds the site with warnings as errors; each chapter page has its figures."""
    index = pipeline.ensure_book(quick=True)
    assert index.exists()
    html = index.parent
    for notebook in CHAPTERS:
        page = (html / "notebooks" / f"{notebook.stem}.html").read_text()
        assert "<img" in page, f"{notebook.stem}: no rendered figure"
        # (a bare "Traceback" also names a pygments style class in highlighted code listings)
        assert "Traceback (most recent call last)" not in page, f"{notebook.stem}: an error"
