"""Every chapter, then every executable book page, runs in quick mode (one test each); then the
book builds from those executed copies.

The book test comes last in this file so it reuses the executed copies; run on its own, it
executes whatever is missing first.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from course_utils.build import pipeline
from course_utils.build.results import metrics_dir

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


def test_there_are_chapters() -> None:
    """The pipeline finds the chapters (an empty glob would make the tests below vacuous)."""
    assert [p.name for p in CHAPTERS][:1] == ["01_baseline_cnn.ipynb"]


@pytest.mark.parametrize("notebook", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_runs_in_quick_mode(notebook: Path) -> None:
    """papermill runs the chapter with QUICK=True, it records its metrics, and leaves no errors."""
    out = pipeline.execute_notebook(notebook, quick=True, device="cpu")
    assert not _errors(out)
    executed = nbformat.read(out, as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "QUICK = True" in injected[0].source
    record = json.loads((metrics_dir(quick=True) / f"{notebook.stem}.json").read_text())
    assert record["mode"] == "quick"
    assert record["metrics"], "the chapter recorded no headline metrics"


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_book_page_runs(page: Path) -> None:
    """Each executable book page (cheat sheet, results) runs without errors after the chapters."""
    assert not _errors(pipeline.execute_notebook(page, quick=True, device="cpu"))


def test_book_builds_from_executed_copies() -> None:
    """jupyter-book builds the site with warnings as errors; each chapter page has its figures."""
    index = pipeline.ensure_book(quick=True)
    assert index.exists()
    html = index.parent
    for notebook in CHAPTERS:
        page = (html / "notebooks" / f"{notebook.stem}.html").read_text()
        assert "<img" in page, f"{notebook.stem}: no rendered figure"
        assert "Traceback" not in page, f"{notebook.stem}: an error output was rendered"
