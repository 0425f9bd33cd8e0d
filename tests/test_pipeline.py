"""``course_utils.build.pipeline``: a failed execution is never reused as fresh or published,
whichever runner executed it; the fallback runners (no papermill) give the same outputs.

Cost: about 25 s (a few kernel starts, and chapter 7 in quick mode with the in-process runner).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from papermill.exceptions import PapermillExecutionError

from course_utils.build import pipeline, runners
from course_utils.build.results import read_execution_times
from course_utils.build.runners import NotebookExecutionError

pytestmark = pytest.mark.slow  # executes notebooks

RUNNERS = ["papermill", "nbclient", "inprocess"]
FAILED = (PapermillExecutionError, NotebookExecutionError)


@pytest.fixture
def build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The pipeline's build folder and metrics folder, redirected into ``tmp_path``."""
    monkeypatch.setattr(pipeline, "BUILD", tmp_path / "_build")
    monkeypatch.setenv("COURSE_METRICS_DIR", str(tmp_path / "metrics"))
    return tmp_path / "_build"


def chapter(folder: Path, *cells: str) -> Path:
    """A chapter with a ``parameters`` cell and then ``cells``, written to ``folder/notebooks/``."""
    params = new_code_cell("QUICK = False\nDEVICE = 'auto'")
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[params, *map(new_code_cell, cells)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nb.metadata["language_info"] = {"name": "python"}
    path = folder / "notebooks" / "99_probe.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_notebook_failing_in_its_last_cell_is_not_fresh(
    build: Path, tmp_path: Path, runner: str
) -> None:
    source = chapter(tmp_path / "src", "raise ValueError('the last cell fails')")
    with pytest.raises(FAILED):
        pipeline.execute_notebook(source, quick=True, device="cpu", runner=runner)
    done = pipeline.executed_path(source, quick=True)
    assert done.exists(), "papermill writes the failed copy; the pipeline must not trust it"
    assert done.stat().st_mtime > source.stat().st_mtime
    assert pipeline.execution_errors(done) == ["ValueError: the last cell fails"]
    assert not pipeline.is_fresh(source, quick=True)


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_clean_execution_is_fresh_until_the_source_changes(
    build: Path, tmp_path: Path, runner: str
) -> None:
    source = chapter(tmp_path / "src", "x = 1 + 1")
    pipeline.execute_notebook(source, quick=True, device="cpu", runner=runner)
    assert pipeline.execution_errors(pipeline.executed_path(source, quick=True)) == []
    assert pipeline.is_fresh(source, quick=True)
    source.touch()
    assert not pipeline.is_fresh(source, quick=True)


def test_a_failed_execution_is_never_staged_for_the_book(
    build: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = chapter(tmp_path / "src", "raise RuntimeError('broken chapter')")
    with pytest.raises(NotebookExecutionError):
        pipeline.execute_notebook(source, quick=True, device="cpu", runner="inprocess")
    monkeypatch.setattr(pipeline, "SITE_ITEMS", ())
    monkeypatch.setattr(pipeline, "chapter_notebooks", lambda: [source])
    monkeypatch.setattr(pipeline, "page_notebooks", lambda: [])
    with pytest.raises(RuntimeError, match="failed execution .*RuntimeError: broken chapter"):
        pipeline.stage_site(quick=True)


def test_the_runner_is_papermill_where_installed_else_a_fallback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """auto: papermill → nbclient → inprocess, by what is importable; the env var forces one."""
    monkeypatch.delenv(runners.RUNNER_ENV, raising=False)
    assert runners.choose_runner() == "papermill"
    monkeypatch.setenv(runners.RUNNER_ENV, "inprocess")
    assert runners.choose_runner() == "inprocess"
    assert runners.choose_runner("nbclient") == "nbclient"  # the argument wins over the env
    with pytest.raises(ValueError, match="unknown notebook runner 'nbconvert'"):
        runners.choose_runner("nbconvert")
    monkeypatch.delenv(runners.RUNNER_ENV)
    real = runners._importable
    monkeypatch.setattr(runners, "_importable", lambda name: name != "papermill" and real(name))
    assert runners.choose_runner() == "nbclient"
    with pytest.raises(ModuleNotFoundError, match="needs papermill"):
        runners.choose_runner("papermill")
    monkeypatch.setattr(runners, "_importable", lambda name: False)
    assert runners.choose_runner() == "inprocess"


PROBE = (
    "from myst_nb import glue\nprint('quick is', QUICK)\nglue('shown', 0.25)\n"
    "glue('hidden', 3, display=False)",
    "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([1, 2])\nplt.show()\n6 * 7",
    "from IPython.display import Markdown, display\ndisplay(Markdown('**bold**'))\nNone",
)


def _outputs(path: Path) -> list[list[dict]]:
    """Each code cell's outputs, multi-line text joined (nbformat stores it as a list)."""

    def joined(value: object) -> object:
        if isinstance(value, dict):
            return {k: joined(v) for k, v in value.items()}
        return "".join(value) if isinstance(value, list) else value

    nb = json.loads(path.read_text())
    return [
        [joined(o) for o in c.get("outputs", [])] for c in nb["cells"] if c["cell_type"] == "code"
    ]


@pytest.mark.parametrize("runner", ["nbclient", "inprocess", "nbclient-glue-stub"])
def test_fallback_runners_write_what_a_jupyter_kernel_writes(
    build: Path, tmp_path: Path, runner: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parameters injected after the parameters cell; printed text, glue (shown and hidden,
    in myst-nb's format), a figure, the last expression's value and display() as outputs."""
    if runner == "nbclient-glue-stub":  # the kernel gets the stand-in glue (no myst_nb here)
        real = runners._importable
        monkeypatch.setattr(runners, "_importable", lambda name: name != "myst_nb" and real(name))
        runner = "nbclient"
    source = chapter(tmp_path / "src", *PROBE)
    out = pipeline.execute_notebook(source, quick=True, device="cpu", runner=runner)
    nb = json.loads(out.read_text())
    assert nb["metadata"]["course_runner"] == {"runner": runner, "exception": False}
    params, injected, glued, figure, shown = _outputs(out)
    assert "QUICK = True" in "".join(nb["cells"][1]["source"])
    assert "injected-parameters" in nb["cells"][1]["metadata"]["tags"]
    assert glued[0]["text"] == "quick is True\n"
    assert [o["metadata"]["scrapbook"]["name"] for o in glued[1:]] == ["shown", "hidden"]
    assert glued[1]["data"]["text/plain"] == "0.25"
    assert glued[2]["data"][runners.GLUE_PREFIX + "text/plain"] == "3"
    assert "image/png" in figure[0]["data"]
    assert figure[1]["output_type"] == "execute_result"
    assert figure[1]["data"]["text/plain"] == "42"
    assert shown == [
        {
            "output_type": "display_data",
            "data": {
                "text/markdown": "**bold**",
                "text/plain": "<IPython.core.display.Markdown object>",
            },
            "metadata": {},
        }
    ]


CHEAPEST = Path(pipeline.REPO / "notebooks" / "07_png_dataloader.ipynb")  # about 8 s in quick mode


def test_a_chapter_runs_in_quick_mode_without_papermill(
    build: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback a GPU image gets (forced here by $COURSE_NOTEBOOK_RUNNER): the chapter runs
    in process without errors, glues every number its prose uses, shows every figure, records
    its metrics and execution time, and its copy says which runner ran it."""
    monkeypatch.setenv(runners.RUNNER_ENV, "inprocess")
    out = pipeline.execute_notebook(CHEAPEST, quick=True, device="cpu")
    assert pipeline.execution_errors(out) == []
    nb = json.loads(out.read_text())
    assert nb["metadata"]["course_runner"]["runner"] == "inprocess"
    source = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    outputs = [o for cell in _outputs(out) for o in cell]
    wanted = set(re.findall(r"glue\(\s*\"(\w+)\"", source))
    glued = {
        o["metadata"]["scrapbook"]["name"] for o in outputs if "scrapbook" in o.get("metadata", {})
    }
    assert wanted and wanted <= glued, f"not glued: {sorted(wanted - glued)}"
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    assert images >= source.count("plt.show()") >= 1
    record = json.loads((tmp_path / "metrics" / f"{CHEAPEST.stem}.json").read_text())
    assert record["mode"] == "quick" and record["metrics"]
    assert read_execution_times(quick=True)[CHEAPEST.stem] > 0
