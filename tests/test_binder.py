"""The pins: ``constraints.txt`` (the one tested set) lies within ``pyproject.toml``'s bounds, and
the Binder configuration (``binder/``) parses, names exactly those pins for what a learner's
notebooks run, installs the course and fetches the data."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from course_utils.paths import REPO_ROOT

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")

BINDER = REPO_ROOT / "binder"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def project() -> dict:
    """The ``[project]`` table of ``pyproject.toml``."""
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def name_of(requirement: str) -> str:
    """The canonical project name of a requirement string (``"course_utils[serve]"`` too)."""
    return canonicalize_name(Requirement(requirement).name)


def bounds(*extras: str) -> dict[str, Requirement]:
    """``pyproject.toml``'s core dependencies and those of ``extras``, by canonical name (the
    course's own extras, ``course_utils[...]``, left out)."""
    lines = project()["dependencies"] + [
        dep for extra in extras for dep in project()["optional-dependencies"][extra]
    ]
    return {name_of(d): Requirement(d) for d in lines if name_of(d) != "course-utils"}


def constraints() -> dict[str, Version]:
    """``constraints.txt``: ``name==version`` per line, by canonical name."""
    pins: dict[str, Version] = {}
    for raw in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_constraints_pin_every_dependency_within_its_bounds() -> None:
    """Every direct dependency of the core and of every extra has one exact pin, inside
    ``pyproject.toml``'s bounds, and nothing else is pinned."""
    extras = list(project()["optional-dependencies"])
    wanted, pins = bounds(*extras), constraints()
    assert sorted(pins) == sorted(wanted), (
        f"not pinned: {sorted(set(wanted) - set(pins))}; "
        f"pinned but not a dependency: {sorted(set(pins) - set(wanted))}"
    )
    for name, version in pins.items():
        assert wanted[name].specifier.contains(version, prereleases=True), (
            f"{name}=={version} is outside pyproject.toml's {wanted[name].specifier}"
        )


def test_the_learner_extras_leave_out_the_book_and_the_server() -> None:
    """What a notebook's setup cell installs (the core and ``chapters``) pulls no book build,
    notebook runner, JupyterLab or server: Colab runs notebooks, it builds no book."""
    heavy = {"jupyter-book", "papermill", "jupyterlab", "streamlit", "flask", "nbval"}
    assert not heavy & set(bounds("chapters")), sorted(heavy & set(bounds("chapters")))


def requirements_file() -> tuple[list[str], dict[str, Requirement]]:
    """``binder/requirements.txt`` as (option lines, requirements by canonical name); a line that
    is not a valid requirement raises ``packaging``'s ``InvalidRequirement``."""
    options: list[str] = []
    reqs: dict[str, Requirement] = {}
    for raw in (BINDER / "requirements.txt").read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            options.append(line)
            continue
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name not in reqs, f"binder/requirements.txt names {name} twice"
        reqs[name] = req
    return options, reqs


def public_specifier(spec: SpecifierSet) -> SpecifierSet:
    """``spec`` with any local version label dropped (``==2.14.1+cpu`` -> ``==2.14.1``)."""
    parts = []
    for item in spec:
        version = item.version.split("+", 1)[0]
        parts.append(f"{item.operator}{version}")
    return SpecifierSet(",".join(parts))


def test_requirements_name_the_constraints_pins() -> None:
    """Binder installs what the notebooks run (the core, ``chapters``, ``serve``) and JupyterLab,
    each at ``constraints.txt``'s exact version, and nothing else."""
    options, binder = requirements_file()
    wanted = {*bounds("chapters", "serve"), "jupyterlab"}
    pins = constraints()
    assert sorted(binder) == sorted(wanted), (
        f"missing in binder/: {sorted(wanted - set(binder))}; "
        f"not a notebook dependency: {sorted(set(binder) - wanted)}"
    )
    for name, req in binder.items():
        assert public_specifier(req.specifier) == SpecifierSet(f"=={pins[name]}"), (
            f"{name}: binder/requirements.txt says {req.specifier}, "
            f"constraints.txt says =={pins[name]}"
        )


def test_torch_comes_as_cpu_wheels_of_the_exact_pins() -> None:
    """torch/torchvision: the exact pinned versions, as ``+cpu`` wheels from PyTorch's CPU index
    (Binder has no GPU; the default wheels pull several GB of CUDA libraries)."""
    options, binder = requirements_file()
    assert options == [f"--extra-index-url {CPU_INDEX}"], options
    for name in ("torch", "torchvision"):
        (spec,) = list(binder[name].specifier)
        assert spec.operator == "==", f"{name} must be pinned exactly"
        assert Version(spec.version).local == "cpu", f"{name}: not a +cpu wheel ({spec})"


def test_runtime_python_is_supported() -> None:
    """``runtime.txt`` picks a Python that ``requires-python`` accepts."""
    line = (BINDER / "runtime.txt").read_text().strip()
    assert line.startswith("python-"), f"runtime.txt: {line!r} is not 'python-X.Y'"
    version = line.removeprefix("python-")
    assert version in SpecifierSet(project()["requires-python"]), (
        f"runtime.txt asks for Python {version}, pyproject.toml requires "
        f"{project()['requires-python']}"
    )


def post_build_commands() -> list[list[str]]:
    """The commands of ``binder/postBuild`` (comments, blank lines and ``set`` left out)."""
    commands = []
    for raw in (BINDER / "postBuild").read_text().splitlines():
        words = shlex.split(raw, comments=True)
        if words and words[0] != "set":
            commands.append(words)
    return commands


def test_post_build_is_an_executable_bash_script() -> None:
    """repo2docker runs ``postBuild`` directly: it needs the executable bit and a shebang, and it
    must stop at the first failing command."""
    script = BINDER / "postBuild"
    assert os.access(script, os.X_OK), "binder/postBuild is not executable (chmod +x)"
    lines = script.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash", lines[0]
    assert "set -euo pipefail" in lines
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    result = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_post_build_installs_the_course_and_fetches_the_data() -> None:
    """postBuild adds the course package (its dependencies come from requirements.txt), then
    fetches and verifies Fashion-MNIST, in that order."""
    commands = post_build_commands()
    install = ["python", "-m", "pip", "install", "--no-cache-dir", "--no-deps", "-e", "."]
    fetch = ["python", "-m", "course_utils.data"]
    assert install in commands, f"postBuild does not run {shlex.join(install)}"
    assert fetch in commands, f"postBuild does not run {shlex.join(fetch)}"
    assert commands.index(install) < commands.index(fetch)
