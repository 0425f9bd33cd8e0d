"""The Colab/Binder setup cell (``course_utils.build.setup_cell``): every notebook carries the
current one, it installs from the archive ``_config.yml`` names, and, run in a fresh virtual
environment without the course, it installs the course so that ``import course_utils`` and the
data work in the same process.

The fresh-environment test costs about 10 s: a wheel built from a copy of the package (no build
isolation, so no download), a ``venv --without-pip`` that sees ``.venv``'s third-party packages
through a ``.pth`` file (torch is not reinstalled), ``PIP_NO_INDEX=1`` (nothing is downloaded),
and data files that are only verified.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import nbformat
import pytest
import yaml

from course_utils.build import setup_cell
from course_utils.build.exercises import make_exercise
from course_utils.data import SHA256, ensure_fashion_mnist
from course_utils.paths import REPO_ROOT

CHAPTER = REPO_ROOT / "notebooks" / "01_baseline_cnn.ipynb"


def _cell(path: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    return next(c for c in nb.cells if c.get("id") == setup_cell.CELL_ID)


def test_every_notebook_carries_the_current_cell() -> None:
    """Chapters, solutions and exercises: the current cell right after the title, tagged
    remove-cell, with the "nothing to set up" output stored in solutions/ only."""
    found = setup_cell.notebooks()
    folders = {p.parent.name for p in found}
    assert folders == {"notebooks", "solutions", "exercises"} and len(found) >= 30
    assert setup_cell.check() == [], "run: python -m course_utils.build.setup_cell sync"


def test_baked_source_is_the_archive_of_config_repository() -> None:
    """The URL baked into the cell is ``<repository.url>/archive/refs/heads/<branch>.zip`` of
    ``_config.yml`` (read here independently), and the override is COURSE_INSTALL_SOURCE."""
    config = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())["repository"]
    expected = f"{config['url'].rstrip('/')}/archive/refs/heads/{config['branch']}.zip"
    source = _cell(CHAPTER).source
    repository = re.search(r'^    repository = "(.+)"$', source, re.M)[1]
    archive = re.search(r'^    archive = f"(.+)"$', source, re.M)[1]
    assert archive.replace("{repository}", repository) == expected
    assert 'os.environ.get("COURSE_INSTALL_SOURCE", archive)' in source
    assert setup_cell.ENV_VAR == "COURSE_INSTALL_SOURCE"


def test_generator_carries_the_cell_verbatim() -> None:
    """The exercise generator keeps the solution's setup cell, code and tags, without output."""
    solution = REPO_ROOT / "solutions" / "01_baseline_cnn_solutions.ipynb"
    exercise = make_exercise(nbformat.read(solution, as_version=4))
    cell = next(c for c in exercise.cells if c.get("id") == setup_cell.CELL_ID)
    assert cell.source == setup_cell.cell_source() and cell.metadata.tags == setup_cell.TAGS
    assert cell.outputs == []


def _repo_copy(tmp_path: Path, url: str) -> Path:
    """A minimal course tree: a _config.yml naming ``url`` and one chapter and one solution."""
    root = tmp_path / "repo"
    for folder in ("notebooks", "solutions", "exercises"):
        (root / folder).mkdir(parents=True)
    config = (REPO_ROOT / "_config.yml").read_text()
    (root / "_config.yml").write_text(re.sub(r"(?m)^  url: .*$", f"  url: {url}", config))
    for name in ("notebooks/01_baseline_cnn.ipynb", "solutions/01_baseline_cnn_solutions.ipynb"):
        nb = nbformat.read(REPO_ROOT / name, as_version=4)
        nb.cells = [c for c in nb.cells if c.get("id") != setup_cell.CELL_ID]
        nbformat.write(nb, root / name)
    return root


def test_sync_is_idempotent_and_check_sees_a_new_url(tmp_path: Path) -> None:
    """sync inserts the cell after the title (output in the solution only), a second sync
    changes nothing, and a changed repository.url makes check fail until the next sync."""
    root = _repo_copy(tmp_path, "https://example.org/me/course")
    assert len(setup_cell.check(root)) == 2
    assert len(setup_cell.sync(root)) == 2
    assert setup_cell.sync(root) == [] and setup_cell.check(root) == []
    chapter = nbformat.read(root / "notebooks/01_baseline_cnn.ipynb", as_version=4)
    assert chapter.cells[0].cell_type == "markdown" and chapter.cells[1].id == "course-setup"
    assert 'repository = "https://example.org/me/course"' in chapter.cells[1].source
    assert chapter.cells[1].outputs == []
    solution = _cell(root / "solutions/01_baseline_cnn_solutions.ipynb")
    assert [o["text"] for o in solution.outputs] == [setup_cell.NOTHING_TO_DO + "\n"]
    config = root / "_config.yml"
    config.write_text(config.read_text().replace("example.org/me", "example.org/fork"))
    assert all("not the current one" in p for p in setup_cell.check(root))
    assert len(setup_cell.sync(root)) == 2 and setup_cell.check(root) == []


# --- the cell itself, run in a fresh virtual environment without the course -------------------

RUNNER = """
import contextlib, importlib.util, io, json, os, sys
assert importlib.util.find_spec("course_utils") is None, "the fresh venv already has the course"
source = json.load(open(sys.argv[1]))["source"]
exec(compile(source, "setup-cell", "exec"), {"__name__": "__main__"})
fetched = os.path.exists("data/FashionMNIST/raw/t10k-labels-idx1-ubyte")
import course_utils, course_utils.build.results, course_utils.checks.ch01, course_utils.data
root = course_utils.data.ensure_fashion_mnist(download=False, debian_dir=sys.argv[2])
again = io.StringIO()
with contextlib.redirect_stdout(again):
    exec(compile(source, "setup-cell", "exec"), {"__name__": "__main__"})
print("RESULT " + json.dumps({
    "file": course_utils.__file__,
    "repo_root": str(course_utils.paths.REPO_ROOT),
    "data_root": str(root),
    "again": again.getvalue(),
    "fetched": fetched,
}))
"""


def _view_of(site_packages: Path, view: Path) -> Path:
    """A folder of links to every entry of ``site_packages`` except the course's own install
    (its dist-info and editable-install hooks), so a fresh venv sees torch & co, not the course."""
    view.mkdir()
    for entry in site_packages.iterdir():
        name = entry.name.lower()
        if name.startswith(("course_utils", "__editable__", "_course_utils")) or name.endswith(
            ".pth"
        ):
            continue
        (view / entry.name).symlink_to(entry)
    return view


def _wheel(tmp_path: Path) -> Path:
    """The course as a wheel, built from a copy of the sources (the checkout stays untouched)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO_ROOT / name, src / name)
    shutil.copytree(
        REPO_ROOT / "course_utils",
        src / "course_utils",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    out = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
        + ["--no-index", "--disable-pip-version-check", "-w", str(out), str(src)],
        check=True,
    )
    return next(out.glob("course_utils-*.whl"))


def run_setup_cell(tmp_path: Path, source: str, install_source: str) -> subprocess.CompletedProcess:
    """Run the cell ``source`` in a fresh venv whose only packages are links to ``.venv``'s
    third-party ones, from a working folder whose ``data/`` holds the verified data (links, and
    one small file gzipped), then import the course and run the cell again."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    fresh_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    view = _view_of(Path(sysconfig.get_path("purelib")), tmp_path / "view")
    (Path(fresh_site) / "course_view.pth").write_text(f"{view}\n")

    work = tmp_path / "work"  # the notebook's folder, as in Colab's /content
    raw = work / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    ours = ensure_fashion_mnist(download=False) / "FashionMNIST" / "raw"
    for name in SHA256:  # all verified, but one only as .gz: the cell's data step unpacks it
        if name == "t10k-labels-idx1-ubyte":
            (raw / f"{name}.gz").write_bytes(gzip.compress((ours / name).read_bytes()))
        else:
            (raw / name).symlink_to(ours / name)
    cell = tmp_path / "cell.json"
    cell.write_text(json.dumps({"source": source}))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.pop("COURSE_DATA_DIR", None)
    env |= {
        "COURSE_INSTALL_SOURCE": install_source,
        "PIP_NO_INDEX": "1",  # nothing may be downloaded: torch & co are already there
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    no_debian = tmp_path / "no-debian"  # the data must come from data/, not /usr/share
    return subprocess.run(
        [python, "-c", RUNNER, str(cell), str(no_debian)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_setup_cell_installs_the_course_in_a_fresh_venv(tmp_path: Path) -> None:
    """A chapter's own setup cell, run where the course is missing, installs it from
    COURSE_INSTALL_SOURCE (a wheel of this checkout) into the fresh venv, keeps torch, puts the
    data next to the notebook, and says so in one line; run again, it does nothing."""
    wheel = _wheel(tmp_path)
    done = run_setup_cell(tmp_path, _cell(CHAPTER).source, str(wheel))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    result = json.loads(next(x for x in lines if x.startswith("RESULT "))[len("RESULT ") :])
    said = [x for x in lines if not x.startswith("RESULT ")]
    work = tmp_path / "work"
    assert said == [
        f"Installed course_utils from {wheel} (+0 packages, torch "
        f"{_torch_version()}); data in {work / 'data'}"
    ]
    assert Path(result["file"]).is_relative_to(tmp_path / "venv"), result["file"]
    assert result["repo_root"] == str(work) and result["data_root"] == str(work / "data")
    assert result["fetched"], "the cell did not fetch the data"
    assert result["again"] == setup_cell.NOTHING_TO_DO + "\n"


def _torch_version() -> str:
    from importlib.metadata import version

    return version("torch")
