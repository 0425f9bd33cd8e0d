"""``course_utils.build.pipeline``: a failed execution is never reused as fresh or published."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from papermill.exceptions import PapermillExecutionError

from course_utils.build import pipeline


@pytest.fixture
def build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The pipeline's build folder and metrics folder, redirected into ``tmp_path``."""
    monkeypatch.setattr(pipeline, "BUILD", tmp_path / "_build")
    monkeypatch.setenv("COURSE_METRICS_DIR", str(tmp_path / "metrics"))
    return tmp_path / "_build"


def chapter(folder: Path, last_cell: str) -> Path:
    """A two-cell chapter with a ``parameters`` cell, written to ``folder/notebooks/``."""
    params = new_code_cell("QUICK = False\nDEVICE = 'auto'")
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[params, new_code_cell(last_cell)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nb.metadata["language_info"] = {"name": "python"}
    path = folder / "notebooks" / "99_probe.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def test_a_notebook_failing_in_its_last_cell_is_not_fresh(build: Path, tmp_path: Path) -> None:
    source = chapter(tmp_path / "src", "raise ValueError('the last cell fails')")
    with pytest.raises(PapermillExecutionError):
        pipeline.execute_notebook(source, quick=True, device="cpu")
    done = pipeline.executed_path(source, quick=True)
    assert done.exists(), "papermill writes the failed copy; the pipeline must not trust it"
    assert done.stat().st_mtime > source.stat().st_mtime
    assert pipeline.execution_errors(done) == ["ValueError: the last cell fails"]
    assert not pipeline.is_fresh(source, quick=True)


def test_a_clean_execution_is_fresh_until_the_source_changes(build: Path, tmp_path: Path) -> None:
    source = chapter(tmp_path / "src", "x = 1 + 1")
    pipeline.execute_notebook(source, quick=True, device="cpu")
    assert pipeline.execution_errors(pipeline.executed_path(source, quick=True)) == []
    assert pipeline.is_fresh(source, quick=True)
    source.touch()
    assert not pipeline.is_fresh(source, quick=True)


def test_a_failed_execution_is_never_staged_for_the_book(
    build: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = chapter(tmp_path / "src", "raise RuntimeError('broken chapter')")
    with pytest.raises(PapermillExecutionError):
        pipeline.execute_notebook(source, quick=True, device="cpu")
    monkeypatch.setattr(pipeline, "SITE_ITEMS", ())
    monkeypatch.setattr(pipeline, "chapter_notebooks", lambda: [source])
    monkeypatch.setattr(pipeline, "page_notebooks", lambda: [])
    with pytest.raises(RuntimeError, match="failed execution .*RuntimeError: broken chapter"):
        pipeline.stage_site(quick=True)
