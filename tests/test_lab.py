"""Chapter 5 and an exercise in JupyterLab, in a real browser (Debian's Chromium via Playwright).

``make lab`` is the first way a learner uses the course. This test starts the venv's
``jupyter lab`` on 127.0.0.1 (a free port, a random token) on a temporary copy of the repository
(the working tree's tracked and unignored files; ``data/`` and the checkpoints linked, not
downloaded), and then, through Lab's own menus and widgets:

1. runs chapter 5 in quick mode (``QUICK = True`` injected after its parameters cell, as papermill
   does): every code cell gets an execution count, no cell shows an error (in the page and in the
   notebook Lab saves), and the ipywidgets explorer renders and redraws when its channel slider is
   moved with the keyboard;
2. runs chapter 5's exercise notebook with task 5.1 filled in from its solution: the 5.1 check
   prints its ✅ line, and the blank 5.2 stops the run with its NotImplementedError and no ✅.

The kernel imports ``course_utils`` from the copy (``PYTHONPATH``), so the copy's ``_build/`` and
``checkpoints/`` take what the notebooks write. Screenshots: ``_build/screenshots/lab_*.png``.
Cost: about 55 s on the 2-core machine (Lab start ~5 s; chapter 5 ~30 s, of which its cells
~20 s; exercise ~15 s; shutdown ~4 s), ~60 s when chapter 1's quick checkpoint is not there yet
and chapter 5 trains it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from browser_support import SCREENSHOTS, chromium, requires_chromium

from course_utils.build import pipeline
from course_utils.build.exercises import BEGIN, END, strip_solutions

CHAPTER = "notebooks/05_visualising.ipynb"
EXERCISE = "exercises/05_visualising_exercises.ipynb"
SOLUTION = "solutions/05_visualising_solutions.ipynb"
FILLED, BLANK = "5.1", "5.2"  # the task filled in from its solution, and the next one, left blank
RUN_TIMEOUT_S = 240  # chapter 5 (quick) runs in ~20 s here: a hang fails rather than stall CI
# Lab's own settings for the test: no request to the news feed (the machine is offline, and its
# toast would cover the notebook in the screenshots).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": (
        '{"fetchNews": "false", "checkForUpdates": false}'
    ),
}

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [requires_chromium, pytest.mark.browser]  # Chromium


# --- the temporary copy -------------------------------------------------------------------------


def repository_files(repo: Path) -> list[str]:
    """The working tree's files that git tracks or would track (not ignored), relative paths."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and (repo / name).is_file()]


def inject_quick(path: Path) -> None:
    """Add papermill's injected-parameters cell (``QUICK = True``) after the parameters cell."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = parameterize_notebook(load_notebook_node(str(path)), {"QUICK": True})
    nbformat.write(nb, path)


def unfold_cells(path: Path) -> None:
    """Show every cell's code: Lab draws a folded cell (the setup cell is stored folded, with
    ``jupyter.source_hidden``) without its prompt, so the test could not read its count."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        cell.metadata.get("jupyter", {}).pop("source_hidden", None)
    nbformat.write(nb, path)


def task_cells(nb: nbformat.NotebookNode, task: str) -> list[int]:
    """Indices of the code cells that hold exercise ``task``'s blank (or solution) block."""
    blank = re.compile(rf"NotImplementedError\(\s*[\"']Exercise {re.escape(task)}:")
    begin = f"# BEGIN SOLUTION {task}:"
    return [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (blank.search(cell.source) or begin in cell.source)
    ]


def fill_task(exercise: Path, solution: Path, task: str) -> None:
    """Put the solution's code for ``task`` into the exercise's cell, as a learner who solved it
    would have it (markers dropped); every other cell stays as generated."""
    ex = nbformat.read(exercise, as_version=4)
    sol = nbformat.read(solution, as_version=4)
    (ex_index,), (sol_index,) = task_cells(ex, task), task_cells(sol, task)
    solved = sol.cells[sol_index].source
    # The two cells must be the same cell: the generator turns the solution's into the exercise's.
    assert strip_solutions(solved) == ex.cells[ex_index].source
    kept = [line for line in solved.split("\n") if not (BEGIN.match(line) or END.match(line))]
    ex.cells[ex_index].source = "\n".join(kept)
    nbformat.write(ex, exercise)


@pytest.fixture(scope="module")
def lab_repo(tmp_path_factory: pytest.TempPathFactory, fashion_root: Path) -> Path:
    """A temporary copy of the repository as a learner has it after ``make data``, with chapter 5
    set to quick mode and exercise 5.1 solved."""
    root = tmp_path_factory.mktemp("lab") / "repo"
    for name in repository_files(pipeline.REPO):
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(pipeline.REPO / name, target)
    (root / "data").symlink_to(fashion_root.resolve(), target_is_directory=True)
    checkpoints = pipeline.REPO / "checkpoints"
    if checkpoints.is_dir():  # chapter 1's model; without it chapter 5 trains it (quick: ~10 s)
        shutil.copytree(checkpoints, root / "checkpoints")
    inject_quick(root / CHAPTER)
    fill_task(root / EXERCISE, root / SOLUTION, FILLED)
    for notebook in (CHAPTER, EXERCISE):
        unfold_cells(root / notebook)
    return root


# --- the Lab server -----------------------------------------------------------------------------


@dataclass
class Lab:
    """A running ``jupyter lab``: its address, token, root folder, log and process id."""

    url: str  # http://127.0.0.1:PORT/
    token: str
    root: Path
    log: Path
    pid: int

    def get(self, path: str) -> bytes:
        request = urllib.request.Request(
            self.url + path, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read()

    def kernel_state(self, notebook: str) -> str | None:
        """The execution state of the kernel of ``notebook``'s session, or None without one."""
        sessions = json.loads(self.get("api/sessions"))
        states = [s["kernel"]["execution_state"] for s in sessions if s["path"] == notebook]
        return states[0] if states else None

    def kernel_pythons(self) -> list[str]:
        """The interpreter of every kernel the server started."""
        import psutil

        kernels = psutil.Process(self.pid).children(recursive=True)
        return [k.cmdline()[0] for k in kernels if "ipykernel_launcher" in k.cmdline()]

    def open_url(self, notebook: str, workspace: str) -> str:
        return f"{self.url}lab/workspaces/{workspace}/tree/{notebook}?reset&token={self.token}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    """Stop the server and every process it started (kernels run in their own sessions, so they
    are found by parent, not by process group), by pid."""
    import psutil

    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    process.terminate()  # jupyter_server shuts its kernels down on SIGTERM
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
    _, alive = psutil.wait_procs(children, timeout=5)
    for child in alive:
        child.kill()


@pytest.fixture(scope="module")
def lab(lab_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """``jupyter lab`` from the venv on the copy; the kernel imports the copy's course_utils."""
    home = tmp_path_factory.mktemp("jupyter")
    for name, text in LAB_SETTINGS.items():
        (home / "settings" / name).parent.mkdir(parents=True, exist_ok=True)
        (home / "settings" / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in pipeline.KERNEL_ENV_REMOVED}
    for name in ("COURSE_DATA_DIR", "COURSE_CHECKPOINT_DIR", "COURSE_METRICS_DIR"):
        env.pop(name, None)  # the kernel must find the copy's data/ link and write into the copy
    env.update(
        PYTHONPATH=str(lab_repo),  # ahead of the editable install of the checkout
        JUPYTER_CONFIG_DIR=str(home / "config"),  # no user config, kernels or workspaces
        JUPYTER_DATA_DIR=str(home / "data"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
        IPYTHONDIR=str(home / "ipython"),
    )
    token, port = secrets.token_hex(24), free_port()
    log = home / "lab.log"
    command = [
        sys.executable, "-m", "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={lab_repo}",
        "--allow-root",  # CI runs as root; harmless otherwise
        "--LabApp.extension_manager=readonly",  # no PyPI queries from the extension manager
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=lab_repo, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    server = Lab(f"http://127.0.0.1:{port}/", token, lab_repo, log, process.pid)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"jupyter lab exited with {process.returncode}:\n{log.read_text()}")
            try:
                server.get("api/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not answer in 60 s:\n{log.read_text()}")
                time.sleep(0.5)
        yield server
    finally:
        stop(process)


# --- the browser --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One headless Chromium for the module."""
    with chromium() as instance:
        yield instance


@pytest.fixture
def page(browser, lab: Lab, request: pytest.FixtureRequest) -> Iterator[object]:
    """A fresh browser context (no cookies, no stored state) with a desktop-sized window; when
    the test fails, the window is saved as ``lab_failure.png``."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    failed_before = request.session.testsfailed
    try:
        yield (page := context.new_page())
        if request.session.testsfailed > failed_before:
            shoot(page, "failure")
    finally:
        context.close()


NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook tab in front
# Per code cell of the notebook in front: its prompt and every output's mime type and text.
CELLS_JS = """sel => [...document.querySelectorAll(sel + ' .jp-CodeCell')].map(cell => ({
    prompt: cell.querySelector('.jp-InputPrompt')?.textContent.trim() ?? '',
    outputs: [...cell.querySelectorAll('.jp-OutputArea-output')].map(o => ({
        mime: o.dataset.mimeType ?? '', text: o.textContent })),
}))"""
COUNTED = re.compile(r"^\[\d+\]:$")
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|^\w*(Error|Exception)\b.*$", re.M)


def cells(page) -> list[dict]:
    return page.evaluate(CELLS_JS, NOTEBOOK)


def kernel_idle(page) -> bool:
    """Lab's own kernel indicator for the notebook in front says idle."""
    status = page.locator(f"{NOTEBOOK} .jp-Notebook-ExecutionIndicator").first
    return status.get_attribute("data-status") == "idle"


def dom_errors(found: list[dict]) -> list[str]:
    """Error outputs shown in the page: Lab renders a traceback as stderr text, so an output
    counts as an error when it is stderr and reads like a traceback or an ``...Error:`` line."""
    return [
        o["text"][-800:]
        for cell in found
        for o in cell["outputs"]
        if "stderr" in o["mime"] and TRACEBACK.search(o["text"])
    ]


def open_notebook(page, lab: Lab, notebook: str, workspace: str) -> None:
    """Open ``notebook`` in a fresh workspace and wait until the server has a kernel for it, idle.

    Lab sometimes asks which kernel to start (when the notebook opens before it has the kernel
    list); a learner clicks "Select" on the preselected Python 3 (ipykernel), and so does this.
    """
    page.goto(lab.open_url(notebook, workspace), wait_until="domcontentloaded")
    page.locator(f"{NOTEBOOK} .jp-Notebook").wait_for(timeout=60_000)
    deadline = time.monotonic() + 90
    while not (lab.kernel_state(notebook) == "idle" and kernel_idle(page)):
        accept_kernel_dialog(page)
        if time.monotonic() > deadline:
            pytest.fail(f"no idle kernel for {notebook} after 90 s:\n{lab.log.read_text()[-3000:]}")
        time.sleep(0.5)
    # A dialog Lab opens later than this is answered by run_all before each click.


def accept_kernel_dialog(page) -> None:
    """Click "Select" in Lab's Select Kernel dialog, if it is open."""
    dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    if dialog.count():
        chosen = dialog.locator("select").evaluate("s => s.selectedOptions[0]?.text ?? ''")
        assert chosen.startswith("Python 3"), f"Lab preselected the kernel {chosen!r}"
        dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
        dialog.wait_for(state="detached", timeout=10_000)
        print("Lab asked for a kernel: selected Python 3 (ipykernel)")


def run_all(page) -> None:
    """Run → Run All Cells, through the menu bar; clicked again (at most twice) if no cell was
    queued 15 s later, after answering a Select Kernel dialog if Lab opened one, so that neither
    a dropped click nor a late dialog hangs the test."""
    started = """sel => [...document.querySelectorAll(sel + ' .jp-CodeCell .jp-InputPrompt')]
        .some(e => e.textContent.trim() !== '[ ]:')"""
    for _ in range(3):
        accept_kernel_dialog(page)
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        try:
            page.wait_for_function(started, arg=NOTEBOOK, timeout=15_000)
            return
        except playwright.TimeoutError:
            page.keyboard.press("Escape")  # close the menu if it is still open
    pytest.fail("Run All Cells queued no cell (the window is in lab_failure.png)")


def wait_for_run(
    page, done: Callable[[list[dict]], bool], timeout_s: float = RUN_TIMEOUT_S
) -> list[dict]:
    """Poll the page until the kernel is idle with no cell queued, twice in a row (the kernel
    is idle for a moment between two queued cells), and return the cells if ``done(cells)``.
    Fails when the run stops without ``done`` (10 s idle: an error stopped it), or at
    ``timeout_s``."""
    start, idle_for = time.monotonic(), 0
    while True:
        found = cells(page)
        prompts = [c["prompt"] for c in found]
        idle_for = idle_for + 1 if "[*]:" not in prompts and kernel_idle(page) else 0
        if idle_for >= 2 and done(found):
            return found
        waited = time.monotonic() - start
        if waited > timeout_s or idle_for >= 10:
            pytest.fail(
                f"the run stopped or hung ({waited:.0f} s) before it was done; prompts: "
                f"{prompts}; errors shown: {dom_errors(found)}"
            )
        time.sleep(1)


def save(page, lab: Lab, notebook: str) -> nbformat.NotebookNode:
    """Lab's save button, then read the notebook as Lab wrote it to disk: once the server has
    answered the save (``PUT /api/contents/…``), which it does after the file is written."""
    path = lab.root / notebook
    saved = page.expect_response(
        lambda r: r.request.method == "PUT" and "/api/contents/" in r.url, timeout=30_000
    )
    with saved as response:
        page.locator(f'{NOTEBOOK} .jp-Toolbar [data-command="docmanager:save"]').click()
    assert response.value.ok, f"Lab could not save the notebook: HTTP {response.value.status}"
    return nbformat.read(path, as_version=4)


def saved_errors(nb: nbformat.NotebookNode) -> list[str]:
    return [
        f"{o.get('ename')}: {o.get('evalue')}"
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]


def check_after(nb: nbformat.NotebookNode, code: list[int], position: int) -> int:
    """The code-cell position of the first ``check_*`` call after code cell ``position``."""
    return next(n for n in range(position + 1, len(code)) if "check_" in nb.cells[code[n]].source)


def shoot(target, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"lab_{name}.png"
    target.screenshot(path=str(path))
    return path


# --- the tests ----------------------------------------------------------------------------------


def test_chapter_5_runs_and_its_explorer_responds(page, lab: Lab) -> None:
    """Run All on chapter 5 (quick): every cell counted, no error shown or saved, the kernel
    wrote the copy's metrics; the explorer's channel slider redraws its figure."""
    open_notebook(page, lab, CHAPTER, "chapter")
    started = time.monotonic()
    run_all(page)
    found = wait_for_run(page, lambda cs: all(COUNTED.match(c["prompt"]) for c in cs))
    print(f"chapter 5 (quick) ran in Lab in {time.monotonic() - started:.0f} s")
    assert not dom_errors(found), f"error output in the page: {dom_errors(found)}"
    nb = save(page, lab, CHAPTER)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "a cell was not run"
    assert not saved_errors(nb), f"error outputs in the saved notebook: {saved_errors(nb)}"
    # The kernel is the venv's python, and it ran the copy's course_utils (its metrics are in
    # the copy's _build/).
    assert lab.kernel_pythons() == [sys.executable], lab.kernel_pythons()
    record = lab.root / "_build" / "metrics" / "quick" / "05_visualising.json"
    assert record.exists(), "the kernel did not write the copy's _build/: which course_utils ran?"

    first_figure = page.locator(f"{NOTEBOOK} .jp-OutputArea-output img").first
    first_figure.scroll_into_view_if_needed()
    shoot(page, "05_chapter")

    explorer = page.locator(f"{NOTEBOOK} .widget-vbox").filter(
        has=page.locator(".widget-slider", has_text="channel")
    )
    explorer.wait_for(timeout=30_000)
    slider = explorer.locator(".widget-slider", has_text="channel")
    readout = slider.locator(".widget-readout")
    figure = explorer.locator(".widget-output img")
    figure.wait_for(timeout=30_000)
    explorer.scroll_into_view_if_needed()
    handle = slider.locator(".noUi-handle")
    channel, image = handle.get_attribute("aria-valuetext"), figure.get_attribute("src")
    shoot(explorer, "05_widget_before")
    handle.focus()
    page.keyboard.press("ArrowRight")  # noUiSlider's keyboard step: channel + 1
    expected = str(int(channel) + 1)
    playwright.expect(readout).to_have_text(expected, timeout=10_000)
    playwright.expect(handle).to_have_attribute("aria-valuetext", expected)
    page.wait_for_function(  # the kernel redrew the figure for the new channel
        "([out, before]) => { const img = out.querySelector('img');"
        " return img !== null && img.src.length > 0 && img.getAttribute('src') !== before; }",
        arg=[explorer.locator(".widget-output").element_handle(), image],
        timeout=30_000,
    )
    shoot(explorer, "05_widget")


def test_exercise_check_prints_its_tick(page, lab: Lab) -> None:
    """Run All on the exercise with 5.1 solved: 5.1's check prints ✅; the blank 5.2 raises its
    NotImplementedError, which stops the run, and no ✅ for 5.2 is printed."""
    open_notebook(page, lab, EXERCISE, "exercise")
    run_all(page)
    nb = nbformat.read(lab.root / EXERCISE, as_version=4)
    shipped = nbformat.read(pipeline.REPO / EXERCISE, as_version=4)  # 5.1 still blank there
    assert len(shipped.cells) == len(nb.cells)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    (filled,), (blank,) = task_cells(shipped, FILLED), task_cells(nb, BLANK)
    at = {cell: n for n, cell in enumerate(code)}  # notebook index → code-cell position
    # A blank is a function whose body raises: the NotImplementedError comes from its check.
    passed, stopped = check_after(nb, code, at[filled]), check_after(nb, code, at[blank])
    found = wait_for_run(page, lambda cs: any(o["text"] for o in cs[stopped]["outputs"]))
    text = ["".join(o["text"] for o in cell["outputs"]) for cell in found]
    assert f"✅ Exercise {FILLED}" in text[passed], f"{FILLED}'s check printed {text[passed]!r}"
    assert not dom_errors(found[:stopped]), f"errors before {BLANK}: {dom_errors(found[:stopped])}"
    assert f"NotImplementedError: Exercise {BLANK}" in text[stopped], text[stopped]
    assert "✅" not in "".join(text[stopped:]), f"{BLANK} is blank, yet a check printed ✅"
    assert all(p == "[ ]:" for p in (c["prompt"] for c in found[stopped + 1 :])), "ran past 5.2"
    page.locator(f"{NOTEBOOK} .jp-CodeCell").nth(passed).scroll_into_view_if_needed()
    shoot(page, "05_exercise_check")
    page.locator(f"{NOTEBOOK} .jp-CodeCell").nth(stopped).scroll_into_view_if_needed()
    shoot(page, "05_exercise_blank")
