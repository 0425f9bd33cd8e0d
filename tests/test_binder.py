"""The Binder configuration (``binder/``): it parses, installs the course, fetches the data, and
names exactly the pins of ``pyproject.toml``."""

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


def pyproject_pins() -> dict[str, Requirement]:
    """The runtime dependencies of ``pyproject.toml``, by canonical name."""
    reqs = [Requirement(line) for line in project()["dependencies"]]
    return {canonicalize_name(req.name): req for req in reqs}


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


def test_requirements_name_the_pyproject_pins() -> None:
    """Every runtime dependency is listed, nothing else, each with pyproject.toml's specifier."""
    options, binder = requirements_file()
    pins = pyproject_pins()
    assert sorted(binder) == sorted(pins), (
        f"missing in binder/: {sorted(set(pins) - set(binder))}; "
        f"not in pyproject.toml: {sorted(set(binder) - set(pins))}"
    )
    for name, req in binder.items():
        assert public_specifier(req.specifier) == pins[name].specifier, (
            f"{name}: binder/requirements.txt says {req.specifier}, "
            f"pyproject.toml says {pins[name].specifier}"
        )
        assert not req.extras or req.extras == pins[name].extras, name


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
