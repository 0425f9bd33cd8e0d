"""The pipeline's parallel lanes: how many (``lanes``), which notebook starts when
(``next_to_start``), and what ``execute_all`` does with a failure (its dependents are not run; the
others are)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from course_utils.build import pipeline
from course_utils.build.pipeline import NEEDS, lanes, next_to_start


def nb(name: str) -> Path:
    folder = "book" if name in ("results", "cheatsheet", "training_fast") else "notebooks"
    return Path(folder) / f"{name}.ipynb"


def test_a_notebook_waits_for_what_it_reads() -> None:
    """Chapter 5 reads chapter 1's checkpoint; the results page reads every chapter's metrics."""
    assert "01_baseline_cnn" in NEEDS["05_visualising"] and NEEDS["results"] == ("*",)
    pending = [nb("05_visualising"), nb("results")]
    running = [nb("01_baseline_cnn"), nb("03_activations")]
    assert next_to_start(pending, running, set(), jobs=4) is None
    running = [nb("03_activations")]
    finished = {"01_baseline_cnn"}
    assert next_to_start(pending, running, finished, jobs=4) == nb("05_visualising")
    assert next_to_start(pending[1:], running, finished, jobs=4) is None
    finished |= {"03_activations", "05_visualising"}
    assert next_to_start(pending[1:], [], finished, jobs=4) == nb("results")


def test_needs_outside_the_run_are_not_waited_for() -> None:
    """`--only 05` runs chapter 5 alone: its checkpoint then comes from an earlier run."""
    assert next_to_start([nb("05_visualising")], [], set(), jobs=2) is not None


def test_lanes_are_limited_by_jobs() -> None:
    pending = [nb("03_activations"), nb("cheatsheet")]
    assert next_to_start(pending, [nb("04_dropout")], set(), jobs=2) == pending[0]
    running = [nb("04_dropout"), nb("02_batchnorm")]
    assert next_to_start(pending, running, set(), jobs=2) is None


def test_one_lane_runs_them_in_needs_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--jobs 1` (full mode's default) also runs the results page after every other page."""
    ran: list[str] = []
    monkeypatch.setattr(pipeline, "execute_notebook", lambda nb, *_, **__: ran.append(nb.stem))
    order = ["results", "training_fast", "05_visualising", "01_baseline_cnn"]
    pipeline.main(["execute", "--jobs", "1", *(str(nb(name)) for name in order)])
    assert ran == ["training_fast", "01_baseline_cnn", "05_visualising", "results"]


def test_quick_mode_runs_a_lane_per_core_and_full_mode_one_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Full mode's timings are findings: one notebook at a time, with every core."""
    monkeypatch.delenv("COURSE_JOBS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert (lanes(quick=True), lanes(quick=False)) == (4, 1)
    monkeypatch.setenv("COURSE_JOBS", "2")
    assert (lanes(quick=True), lanes(quick=False)) == (2, 2)


def _notebook(path: Path, code: str) -> Path:
    params = new_code_cell("QUICK = False\nDEVICE = 'auto'")
    params.metadata["tags"] = ["parameters"]
    book = new_notebook(cells=[params, new_code_cell(code)])
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    book.metadata["language_info"] = {"name": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(book, path)
    return path


@pytest.mark.slow
def test_a_failure_stops_its_dependents_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chapter 1 fails: chapter 5 (which reads its checkpoint) is not run and is reported; an
    independent notebook runs, in its own process with its share of the cores."""
    monkeypatch.setattr(pipeline, "BUILD", tmp_path / "_build")
    monkeypatch.setenv("COURSE_METRICS_DIR", str(tmp_path / "metrics"))
    src = tmp_path / "src" / "notebooks"
    first = _notebook(src / "01_baseline_cnn.ipynb", "raise ValueError('chapter 1 broke')")
    fifth = _notebook(src / "05_visualising.ipynb", "print('should not run')")
    other = _notebook(
        src / "03_activations.ipynb",
        "import os; open('threads.txt', 'w').write(os.environ.get('OMP_NUM_THREADS', 'all'))",
    )
    failures = pipeline.execute_all([first, fifth, other], quick=True, device="cpu", jobs=2)
    assert set(failures) == {first, fifth}
    assert "ValueError" in failures[first] and "chapter 1 broke" in failures[first]
    assert failures[fifth] == "not run: 01_baseline_cnn failed"
    assert not pipeline.executed_path(fifth, quick=True).exists()
    assert pipeline.execution_errors(pipeline.executed_path(other, quick=True)) == []
    cores = os.cpu_count() or 1
    assert (src / "threads.txt").read_text() == str(max(1, cores // 2))


def _closure(name: str) -> set[str]:
    """Everything ``name`` waits for, directly or through another notebook."""
    found, todo = set(), list(NEEDS.get(name, ()))
    while todo:
        need = todo.pop()
        if need not in found:
            found.add(need)
            todo.extend(NEEDS.get(need, ()))
    return found


@pytest.mark.parametrize(
    ("reads", "writer"),
    [
        (r"load_or_train_baseline\(|default_models\(", "01_baseline_cnn"),
        (r"export_dir\(", "08_export"),
    ],
)
def test_every_notebook_that_reads_a_file_waits_for_its_writer(reads: str, writer: str) -> None:
    """A chapter that loads chapter 1's checkpoint (or would train it, racing chapter 1 to save
    it) or chapter 8's export starts after that chapter: found by reading every notebook's code,
    so a new chapter that forgets its line in NEEDS fails here."""
    notebooks = pipeline.chapter_notebooks() + pipeline.page_notebooks()
    readers = [
        path.stem
        for path in notebooks
        if path.stem != writer
        and any(
            re.search(reads, cell.source)
            for cell in nbformat.read(path, as_version=4).cells
            if cell.cell_type == "code"
        )
    ]
    assert readers, f"no notebook matches {reads!r}: the pattern is stale"
    missing = [name for name in readers if writer not in _closure(name)]
    assert not missing, f"{missing} read {writer}'s files: add them to pipeline.NEEDS"
