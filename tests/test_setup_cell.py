"""The Colab/Binder setup cell (``course_utils.build.setup_cell``): every notebook carries the
current one (at most 10 lines), it installs from the archive ``_config.yml`` names, and, in a fresh
virtual environment that holds only what the core and the ``chapters`` extra need, chapter 1's own
cell installs the course and the whole chapter runs there.

The fresh-environment test costs about a minute and a half (chapter 1 in quick mode): a wheel
built from a copy of the package (no build isolation, no download), a ``venv --without-pip`` that
sees, through a ``.pth`` file, only the distributions of ``.venv`` that the core and ``chapters``
require (and pip), ``PIP_NO_INDEX=1`` (nothing is downloaded: a requirement outside that set, such
as jupyter-book or Flask, makes the install fail), and data files that are only verified.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import nbformat
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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
    remove-cell, with no stored output (it prints nothing where the course is installed)."""
    found = setup_cell.notebooks()
    folders = {p.parent.name for p in found}
    assert folders == {"notebooks", "solutions", "exercises"} and len(found) >= 30
    assert setup_cell.check() == [], "run: python -m course_utils.build.setup_cell sync"


def test_the_cell_is_ten_lines_of_one_pip_install() -> None:
    """At most 10 lines; one ``%pip install`` of the course with the ``chapters`` extra only."""
    source = setup_cell.cell_source()
    assert len(source.splitlines()) <= 10, source
    installs = [line.strip() for line in source.splitlines() if "pip install" in line]
    assert installs == ['%pip install --quiet "course_utils[chapters] @ {source}"'], installs


def test_baked_source_is_the_archive_of_config_repository() -> None:
    """The URL baked into the cell is ``<repository.url>/archive/<branch>.zip`` of
    ``_config.yml`` (read here independently), and the override is COURSE_INSTALL_SOURCE."""
    config = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())["repository"]
    source = _cell(CHAPTER).source
    repo = re.search(r'^    repo = "(.+)"$', source, re.M)[1]
    assert repo == config["url"].rstrip("/")
    default = f'f"{{repo}}/archive/{config["branch"]}.zip"'
    assert f'os.environ.get("COURSE_INSTALL_SOURCE", {default})' in source
    assert setup_cell.ENV_VAR == "COURSE_INSTALL_SOURCE"


def test_generator_carries_the_cell_verbatim() -> None:
    """The exercise generator keeps the solution's setup cell, code and tags, without output."""
    solution = REPO_ROOT / "solutions" / "01_baseline_cnn_solutions.ipynb"
    exercise = make_exercise(nbformat.read(solution, as_version=4))
    cell = next(c for c in exercise.cells if c.get("id") == setup_cell.CELL_ID)
    assert cell.source == setup_cell.cell_source()
    assert cell.metadata.tags == setup_cell.METADATA["tags"] and cell.outputs == []


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
    """sync inserts the cell after the title, a second sync changes nothing, a stored output
    or a changed repository.url makes check fail until the next sync."""
    root = _repo_copy(tmp_path, "https://example.org/me/course")
    assert len(setup_cell.check(root)) == 2
    assert len(setup_cell.sync(root)) == 2
    assert setup_cell.sync(root) == [] and setup_cell.check(root) == []
    chapter_path = root / "notebooks/01_baseline_cnn.ipynb"
    chapter = nbformat.read(chapter_path, as_version=4)
    assert chapter.cells[0].cell_type == "markdown" and chapter.cells[1].id == "course-setup"
    assert 'repo = "https://example.org/me/course"' in chapter.cells[1].source
    chapter.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="hi\n")]
    nbformat.write(chapter, chapter_path)
    assert [p.split(":")[0] for p in setup_cell.check(root)] == ["notebooks/01_baseline_cnn.ipynb"]
    config = root / "_config.yml"
    config.write_text(config.read_text().replace("example.org/me", "example.org/fork"))
    assert all("not the current one" in p for p in setup_cell.check(root))
    assert len(setup_cell.sync(root)) == 2 and setup_cell.check(root) == []


# --- the cell itself: chapter 1 in a fresh venv with only the learner's packages -------------

#: What the learner extras must not pull (the book build, the notebook runners, the server).
NOT_FOR_LEARNERS = ("jupyter_book", "papermill", "jupyterlab", "streamlit", "flask", "nbval")


def learner_closure(extras: tuple[str, ...] = ("chapters",)) -> set[str]:
    """The canonical names of the distributions that the course's core and ``extras`` need,
    following ``.venv``'s installed metadata transitively (markers evaluated), plus pip."""
    wanted, todo = {"pip"}, [("course-utils", frozenset(extras))]
    while todo:
        name, chosen = todo.pop()
        for line in metadata.distribution(name).requires or []:
            req = Requirement(line)
            envs = [{"extra": e} for e in chosen] or [{"extra": ""}]
            if req.marker is not None and not any(req.marker.evaluate(e) for e in envs):
                continue
            dep = canonicalize_name(req.name)
            if dep == "course-utils":
                todo.append((dep, frozenset(req.extras)))
            elif dep not in wanted:
                wanted.add(dep)
                todo.append((dep, frozenset(req.extras)))
    return wanted


def _view_of(names: set[str], view: Path) -> Path:
    """A folder of links to the top-level entries (packages, modules, dist-info) of the
    distributions ``names`` in ``.venv``'s site-packages, and to nothing else."""
    site = Path(sysconfig.get_path("purelib"))
    view.mkdir()
    for dist in metadata.distributions():
        if canonicalize_name(dist.metadata["Name"] or "") not in names:
            continue
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops - {"__pycache__"}:
            if (site / top).exists() and not (view / top).exists():
                (view / top).symlink_to(site / top)
    return view


def _wheel(tmp_path: Path) -> Path:
    """The course as a wheel, built from a copy of the sources (the checkout stays untouched)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO_ROOT / name, src / name)
    for package in ("course_utils", "serving"):
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(REPO_ROOT / package, src / package, ignore=ignore)
    out = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
        + ["--no-index", "--disable-pip-version-check", "-w", str(out), str(src)],
        check=True,
    )
    return next(out.glob("course_utils-*.whl"))


def _fresh_venv(tmp_path: Path, names: set[str]) -> Path:
    """A ``venv --without-pip`` that sees only the distributions ``names``; its python."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    code = "import sysconfig; print(sysconfig.get_path('purelib'))"
    fresh_site = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True)
    view = _view_of(names, tmp_path / "view")
    (Path(fresh_site.stdout.strip()) / "course_view.pth").write_text(f"{view}\n")
    return python


def _work_folder(tmp_path: Path) -> Path:
    """The notebook's folder (Colab's /content): ``data/`` holds the verified data (links, and
    one small file only gzipped, which the chapter's own data call unpacks)."""
    work = tmp_path / "work"
    raw = work / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    ours = ensure_fashion_mnist(download=False) / "FashionMNIST" / "raw"
    for name in SHA256:
        if name == "t10k-labels-idx1-ubyte":
            (raw / f"{name}.gz").write_bytes(gzip.compress((ours / name).read_bytes()))
        else:
            (raw / name).symlink_to(ours / name)
    return work


@pytest.mark.slow
def test_chapter_1_runs_in_a_fresh_venv_with_the_learner_extras(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chapter 1 in quick mode, in a kernel of a fresh venv that holds only what the core and
    ``chapters`` need: its setup cell installs the course from COURSE_INSTALL_SOURCE (a wheel of
    this checkout) with no index, keeping torch, and every cell runs. Afterwards the venv has the
    course and none of jupyter-book, papermill, JupyterLab, Streamlit, Flask or nbval."""
    import papermill

    names = learner_closure()
    leaked = {canonicalize_name(m) for m in NOT_FOR_LEARNERS} & names
    assert not leaked, f"the learner extras need {sorted(leaked)}"
    python = _fresh_venv(tmp_path, names)
    wheel = _wheel(tmp_path)
    work = _work_folder(tmp_path)
    kernel = tmp_path / "jupyter" / "kernels" / "fresh"
    kernel.mkdir(parents=True)
    argv = [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec = {"argv": argv, "display_name": "fresh venv", "language": "python"}
    (kernel / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    for name in ("PYTHONPATH", "VIRTUAL_ENV", "COURSE_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COURSE_INSTALL_SOURCE", wheel.as_uri())
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # nothing is downloaded: torch & co are there
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")

    papermill.execute_notebook(
        str(CHAPTER),
        str(tmp_path / "ran.ipynb"),
        parameters={"QUICK": True},
        kernel_name="fresh",
        cwd=str(work),
        progress_bar=False,
    )
    probe = (
        "import importlib.util as u, json, course_utils, torch; print(json.dumps("
        "[course_utils.__file__, torch.__file__, "
        f"[m for m in {NOT_FOR_LEARNERS!r} if u.find_spec(m)]]))"
    )
    found = subprocess.run(
        [python, "-c", probe], cwd=work, capture_output=True, text=True, check=True
    )
    course, torch_file, heavy = json.loads(found.stdout)
    assert Path(course).is_relative_to(tmp_path / "venv"), course
    assert Path(torch_file).is_relative_to(tmp_path / "view"), (
        f"torch was reinstalled: {torch_file}"
    )
    assert heavy == [], f"the learner install has {heavy}"
    ran = nbformat.read(tmp_path / "ran.ipynb", as_version=4)
    setup = next(c for c in ran.cells if c.get("id") == setup_cell.CELL_ID)
    assert setup.outputs, "the setup cell printed nothing: did it install anything?"


def _run_serve_cell(found: bool) -> list[tuple[str, str]]:
    """Run chapter 9's ``serve-setup`` cell as IPython would, with ``find_spec`` answering
    ``found``; the ``%pip`` lines it ran, with their ``{…}`` expanded as IPython does."""
    from unittest import mock

    from IPython.core.inputtransformer2 import TransformerManager
    from IPython.utils.text import DollarFormatter

    nb = nbformat.read(REPO_ROOT / "notebooks" / "09_serving.ipynb", as_version=4)
    source = next(c.source for c in nb.cells if c.get("id") == "serve-setup")
    ran: list[tuple[str, str]] = []
    namespace: dict = {}

    class Shell:
        def run_line_magic(self, name: str, line: str) -> None:
            ran.append((name, DollarFormatter().vformat(line, args=[], kwargs=namespace)))

    namespace["get_ipython"] = Shell
    spec = object() if found else None
    with mock.patch("importlib.util.find_spec", return_value=spec):
        exec(TransformerManager().transform_cell(source), namespace)
    return ran


def test_chapter_9_adds_the_serve_extra_where_the_server_packages_are_missing() -> None:
    """Where Flask, Waitress or Streamlit is missing (Colab after the setup cell), chapter 9's
    second cell pip-installs exactly the ``serve`` extra's requirements; elsewhere nothing."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    wanted = {canonicalize_name(Requirement(r).name): Requirement(r).specifier
              for r in project["optional-dependencies"]["serve"]}  # fmt: skip
    assert _run_serve_cell(found=True) == []
    ((magic, line),) = _run_serve_cell(found=False)
    assert magic == "pip" and line.startswith("install --quiet ")
    asked = [Requirement(word.strip("'")) for word in line.split()[2:]]
    assert {canonicalize_name(r.name): r.specifier for r in asked} == wanted
    for path in ("solutions/09_serving_solutions.ipynb", "exercises/09_serving_exercises.ipynb"):
        nb = nbformat.read(REPO_ROOT / path, as_version=4)
        assert [c.source for c in nb.cells if c.get("id") == "serve-setup"] == [
            next(c.source for c in nbformat.read(
                REPO_ROOT / "notebooks" / "09_serving.ipynb", as_version=4
            ).cells if c.get("id") == "serve-setup")
        ], path  # fmt: skip
