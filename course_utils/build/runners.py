"""Notebook runners: papermill, or where it is missing, nbclient or a plain in-process runner.

All three run a notebook's code cells in order with the parameters injected after the
``parameters`` cell (as papermill does: a cell tagged ``injected-parameters``), write the
executed copy also when a cell fails (its error output names the failure), and raise
:class:`NotebookExecutionError` (papermill: its own ``PapermillExecutionError``) on a failure.

* ``papermill``: the course's executor (a fresh Jupyter kernel per notebook).
* ``nbclient``: the same Jupyter kernel without papermill (a GPU image often lacks it). If
  ``myst_nb`` is not importable here, a hidden first cell gives the kernel a stand-in ``glue``.
* ``inprocess``: no Jupyter at all: each cell is ``exec``'d in one fresh namespace in this
  process. Printed text, the value of a cell's last expression, ``display(...)`` calls,
  matplotlib figures and ``glue`` (myst-nb's, replaced by a stand-in writing the same output)
  become the cell's outputs. Shell escapes and magics (``!``, ``%``) are not supported.

``$COURSE_NOTEBOOK_RUNNER`` (or the ``runner`` argument) forces one of them; the default is the
first that is importable, in the order above.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import gc
import importlib.util
import io
import json
import linecache
import os
import sys
import time
import traceback
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "RUNNERS",
    "RUNNER_ENV",
    "NotebookExecutionError",
    "choose_runner",
    "inject_parameters",
    "run_notebook",
]

RUNNERS: tuple[str, ...] = ("papermill", "nbclient", "inprocess")
RUNNER_ENV = "COURSE_NOTEBOOK_RUNNER"
GLUE_PREFIX = "application/papermill.record/"  # myst-nb's prefix for glue(..., display=False)


class NotebookExecutionError(RuntimeError):
    """A cell raised while a fallback runner executed the notebook (the copy is still written)."""


def _importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def choose_runner(preference: str | None = None) -> str:
    """The runner to use: ``preference``, else ``$COURSE_NOTEBOOK_RUNNER``, else the first
    importable of papermill → nbclient (with ipykernel) → inprocess.

    Raises:
        ValueError: an unknown runner name.
        ModuleNotFoundError: the requested runner's package is not installed.
    """
    wanted = preference or os.environ.get(RUNNER_ENV) or "auto"
    if wanted == "auto":
        if _importable("papermill"):
            return "papermill"
        if _importable("nbclient") and _importable("ipykernel"):
            return "nbclient"
        return "inprocess"
    if wanted not in RUNNERS:
        raise ValueError(f"unknown notebook runner {wanted!r}; use one of {RUNNERS} or 'auto'")
    needs = {"papermill": ("papermill",), "nbclient": ("nbclient", "ipykernel")}.get(wanted, ())
    if missing := [n for n in needs if not _importable(n)]:
        raise ModuleNotFoundError(
            f"runner {wanted!r} needs {', '.join(missing)}: install it, or set "
            f"{RUNNER_ENV}=inprocess (no Jupyter needed)"
        )
    return wanted


def _source(cell: dict[str, Any]) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _tags(cell: dict[str, Any]) -> list[str]:
    return cell.setdefault("metadata", {}).setdefault("tags", [])


def _code_cell(source: str, tags: list[str]) -> dict[str, Any]:
    return {
        "cell_type": "code",
        "execution_count": None,
        "id": f"injected-{len(source):x}-{abs(hash(source)) % 10**8:08d}",
        "metadata": {"tags": tags},
        "outputs": [],
        "source": source,
    }


def inject_parameters(nb: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
    """Insert a cell tagged ``injected-parameters`` that sets ``parameters`` (as papermill
    does: right after the ``parameters`` cell, or first if there is none); an earlier injected
    cell is replaced. Returns ``nb``, changed in place."""
    cells = [c for c in nb["cells"] if "injected-parameters" not in _tags(c)]
    lines = ["# Parameters"] + [f"{k} = {v!r}" for k, v in parameters.items()]
    injected = _code_cell("\n".join(lines) + "\n", ["injected-parameters"])
    at = next((i + 1 for i, c in enumerate(cells) if "parameters" in _tags(c)), 0)
    cells.insert(at, injected)
    nb["cells"] = cells
    return nb


def run_notebook(
    source: Path,
    out: Path,
    parameters: dict[str, Any],
    cwd: Path,
    runner: str,
    progress: bool = False,
) -> None:
    """Execute ``source`` with ``parameters`` into ``out`` (working directory ``cwd``).

    The executed copy's metadata records ``course_runner`` (which runner, whether a cell
    raised). Raises the runner's execution error after writing ``out`` if a cell fails.
    """
    if runner == "papermill":
        import papermill

        papermill.execute_notebook(
            str(source),
            str(out),
            parameters=parameters,
            cwd=str(cwd),
            kernel_name="python3",
            progress_bar=progress,
            report_mode=False,
        )
        _mark(out, runner, failed=False)
        return
    nb = inject_parameters(json.loads(Path(source).read_text(encoding="utf-8")), parameters)
    execute = _run_nbclient if runner == "nbclient" else _run_inprocess
    failure = execute(nb, cwd, source.stem)
    nb.setdefault("metadata", {})["course_runner"] = {
        "runner": runner,
        "exception": failure is not None,
    }
    out.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    if failure is not None:
        raise NotebookExecutionError(f"{source.name}: {failure} (executed copy: {out})")


def _mark(path: Path, runner: str, failed: bool) -> None:
    nb = json.loads(path.read_text(encoding="utf-8"))
    nb.setdefault("metadata", {})["course_runner"] = {"runner": runner, "exception": failed}
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


# --- nbclient -------------------------------------------------------------------------------

# myst-nb's glue, for a kernel where myst_nb is not installed (same output format).
GLUE_STUB = f'''import sys as _sys, types as _types
from IPython.core.formatters import format_display_data as _format
from IPython.display import display as _display

def _glue(name, variable, display=True):
    bundle, metadata = _format(variable)
    prefix = "" if display else "{GLUE_PREFIX}"
    metadata["scrapbook"] = dict(name=name, mime_prefix=prefix)
    _display({{prefix + k: v for k, v in bundle.items()}}, raw=True, metadata=metadata)

_sys.modules["myst_nb"] = _types.SimpleNamespace(glue=_glue)
'''


def _run_nbclient(nb: dict[str, Any], cwd: Path, label: str) -> str | None:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    stub = not _importable("myst_nb")
    if stub:
        nb["cells"].insert(0, _code_cell(GLUE_STUB, ["remove-cell", "injected-glue-stub"]))
    node = nbformat.reads(json.dumps(nb), as_version=4)  # also joins list sources
    client = NotebookClient(
        node, kernel_name="python3", timeout=None, resources={"metadata": {"path": str(cwd)}}
    )
    failure = None
    try:
        client.execute()
    except CellExecutionError as err:
        failure = f"{err.ename}: {err.evalue}"
    result = json.loads(nbformat.writes(node))
    if stub:
        result["cells"] = [c for c in result["cells"] if "injected-glue-stub" not in _tags(c)]
    nb.clear()
    nb.update(result)
    return failure


# --- in-process -----------------------------------------------------------------------------


def _bundle(obj: Any) -> dict[str, Any]:
    """A Jupyter mime bundle for ``obj``: its rich reprs where it has them, plus text/plain."""
    if hasattr(obj, "savefig"):  # a matplotlib figure
        buffer = io.BytesIO()
        obj.savefig(buffer, format="png", bbox_inches="tight")
        return {"image/png": base64.b64encode(buffer.getvalue()).decode(), "text/plain": repr(obj)}
    data: dict[str, Any] = {}
    for mime, method in (
        ("text/html", "_repr_html_"),
        ("text/markdown", "_repr_markdown_"),
        ("image/png", "_repr_png_"),
        ("text/latex", "_repr_latex_"),
    ):
        if callable(getattr(obj, method, None)):
            try:
                value = getattr(obj, method)()
            except Exception:  # noqa: BLE001 - a failing rich repr falls back to text
                value = None
            if isinstance(value, bytes):
                value = base64.b64encode(value).decode()
            if value is not None:
                data[mime] = value
    data["text/plain"] = repr(obj)
    return data


class _Cell:
    """Collects one cell's outputs while it runs in process."""

    def __init__(self) -> None:
        self.outputs: list[dict[str, Any]] = []
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()

    def flush_streams(self) -> None:
        for name, buffer in (("stdout", self.stdout), ("stderr", self.stderr)):
            if text := buffer.getvalue():
                self.outputs.append({"output_type": "stream", "name": name, "text": text})
            buffer.seek(0)
            buffer.truncate()

    def add(self, data: dict[str, Any], metadata: dict[str, Any] | None = None) -> None:
        self.flush_streams()
        self.outputs.append(
            {"output_type": "display_data", "data": data, "metadata": metadata or {}}
        )

    def flush_figures(self) -> None:
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is None:
            return
        for number in plt.get_fignums():
            self.add(_bundle(plt.figure(number)))
        plt.close("all")


@contextlib.contextmanager
def _swapped(obj: Any, name: str, value: Any) -> Iterator[None]:
    missing = object()
    old = getattr(obj, name, missing)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if old is missing:
            delattr(obj, name)
        else:
            setattr(obj, name, old)


@contextlib.contextmanager
def _stand_ins(current: list[_Cell]) -> Iterator[None]:
    """``display``, ``glue`` and ``plt.show`` write into the running cell's outputs."""

    def display(*objs: Any, raw: bool = False, metadata: dict[str, Any] | None = None, **_: Any):
        for obj in objs:
            current[0].add(obj if raw else _bundle(obj), metadata)

    def glue(name: str, variable: Any, display: bool = True) -> None:
        prefix = "" if display else GLUE_PREFIX
        data = {prefix + k: v for k, v in _bundle(variable).items()}
        current[0].add(data, {"scrapbook": {"name": name, "mime_prefix": prefix}})

    def show(*_: Any, **__: Any) -> None:
        current[0].flush_figures()

    with contextlib.ExitStack() as stack:
        glue_module = types.ModuleType("myst_nb")
        glue_module.glue = glue  # type: ignore[attr-defined]
        stack.enter_context(_swapped_module("myst_nb", glue_module))
        if _importable("IPython"):
            import IPython.display

            stack.enter_context(_swapped(IPython.display, "display", display))
        else:  # the few IPython.display names the course uses, as plain stand-ins
            shim = types.ModuleType("IPython.display")
            shim.display = display  # type: ignore[attr-defined]
            for kind, method in (("HTML", "_repr_html_"), ("Markdown", "_repr_markdown_")):
                shim.__dict__[kind] = type(kind, (), {"__init__": _keep_data, method: _data})
            stack.enter_context(_swapped_module("IPython", types.ModuleType("IPython")))
            stack.enter_context(_swapped_module("IPython.display", shim))
        if _importable("matplotlib"):
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            stack.enter_context(_swapped(plt, "show", show))
        yield


def _keep_data(self: Any, data: str = "") -> None:
    self.data = data


def _data(self: Any) -> str:
    return self.data


@contextlib.contextmanager
def _swapped_module(name: str, module: types.ModuleType) -> Iterator[None]:
    old = sys.modules.get(name)
    sys.modules[name] = module
    try:
        yield
    finally:
        if old is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = old


def _python(source: str) -> str:
    """``source`` with IPython's syntax (``%pip``, ``!cmd``) turned into Python calls, as Jupyter
    does (the setup cells' ``%pip`` sits in a branch that runs only without the course; a magic
    that does run here fails with a NameError: there is no IPython shell); as is without IPython.
    """
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except ImportError:
        return source
    return TransformerManager().transform_cell(source)


def _exec_cell(source: str, namespace: dict[str, Any], filename: str) -> Any:
    """Run ``source``; return the value of its last line if that is an expression (else None)."""
    source = _python(source)
    # Registered like IPython's cells, so inspect.getsource (torch.jit.script) and tracebacks
    # can read the code back.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    tree = ast.parse(source, filename)
    last = None
    shown = not source.rstrip().endswith(";")  # as in Jupyter, a trailing ";" hides the value
    if shown and tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, filename, "exec"), namespace)  # noqa: S102 - running the notebook is the job
    return eval(compile(last, filename, "eval"), namespace) if last else None  # noqa: S307


def _run_inprocess(nb: dict[str, Any], cwd: Path, label: str) -> str | None:
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
    current = [_Cell()]
    old_cwd, old_path = Path.cwd(), list(sys.path)
    os.chdir(cwd)
    sys.path.insert(0, str(cwd))
    failure = None
    count = 0
    try:
        with _stand_ins(current):
            namespace["display"] = sys.modules["IPython.display"].display
            for index, cell in enumerate(nb["cells"]):
                if cell.get("cell_type") != "code":
                    continue
                count += 1
                cell["execution_count"] = count
                if failure is not None:  # as in Jupyter: nothing runs after the failing cell
                    cell["outputs"] = []
                    continue
                current[0] = out = _Cell()
                start = time.perf_counter()
                try:
                    with (
                        contextlib.redirect_stdout(out.stdout),
                        contextlib.redirect_stderr(out.stderr),
                    ):
                        name = f"<{label} cell {index}>"
                        value = _exec_cell(_source(cell), namespace, name)
                        out.flush_figures()
                    out.flush_streams()
                    if value is not None:
                        out.outputs.append(
                            {
                                "output_type": "execute_result",
                                "execution_count": count,
                                "data": _bundle(value),
                                "metadata": {},
                            }
                        )
                except BaseException as err:  # noqa: BLE001 - recorded, then reported
                    if isinstance(err, KeyboardInterrupt):
                        raise
                    out.flush_streams()
                    out.outputs.append(
                        {
                            "output_type": "error",
                            "ename": type(err).__name__,
                            "evalue": str(err),
                            "traceback": traceback.format_exception(err),
                        }
                    )
                    failure = f"cell {index}: {type(err).__name__}: {err}"
                cell["outputs"] = out.outputs
                cell["metadata"]["execution"] = {"seconds": round(time.perf_counter() - start, 3)}
    finally:
        os.chdir(old_cwd)
        sys.path[:] = old_path
        namespace.clear()
        _release_memory()
    return failure


def _release_memory() -> None:
    """Free what the notebook left (its namespace is cleared): figures, objects, CUDA cache."""
    if plt := sys.modules.get("matplotlib.pyplot"):
        plt.close("all")
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
