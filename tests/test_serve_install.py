"""The minimal serving dependency set (``requirements-serve.txt``) in a fresh virtual environment:
it installs from PyPI without torch, JupyterLab or jupyter-book, and serves an ``.onnx`` model.

Cost: about 30 s with a warm pip cache (``~/.cache/pip``; ~40 MB of wheels: ONNX Runtime, NumPy,
Pillow, Flask, waitress and their few dependencies), a minute or two on a cold one. Set
``COURSE_SKIP_SERVE_INSTALL=1`` to skip it; without access to the package index it skips itself,
with the reason pip gave.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import threading
import venv
from pathlib import Path

import numpy as np
import pytest
import requests
import tomllib
import torch

from course_utils.artefacts import save_atomically
from course_utils.models import FashionCNN
from course_utils.paths import REPO_ROOT
from serving.upload import encode_png, normalise_array

REQUIREMENTS = REPO_ROOT / "requirements-serve.txt"
FORBIDDEN = ("torch", "jupyterlab", "jupyter_book", "matplotlib", "streamlit")


def requirement_lines() -> list[str]:
    lines = (line.split("#")[0].strip() for line in REQUIREMENTS.read_text().splitlines())
    return [line for line in lines if line]


def name_of(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ]", requirement, maxsplit=1)[0].lower()


def test_the_serving_requirements_are_pyprojects_pins() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["serve"]
    pins = {name_of(dep): dep for dep in deps}
    lines = requirement_lines()
    assert {name_of(line) for line in lines} == {
        "flask",
        "waitress",
        "numpy",
        "pillow",
        "onnxruntime",
    }
    for line in lines:
        assert line == pins[name_of(line)], f"{line} differs from pyproject's {pins[name_of(line)]}"


def skip_unless_the_index_answers(pip: list[str], folder: Path) -> None:
    """Skip, with pip's own words, when the package index cannot be reached: a probe downloads
    one small wheel (waitress, no dependencies). Any later failure is a real one."""
    probe = subprocess.run(
        [*pip, "download", "--no-deps", "--dest", str(folder), "waitress"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if probe.returncode:
        last = (probe.stderr.strip() or probe.stdout.strip()).splitlines()[-1:]
        pytest.skip(f"the package index cannot be reached: {' '.join(last)[:300]}")


@pytest.mark.network
@pytest.mark.skipif(
    os.environ.get("COURSE_SKIP_SERVE_INSTALL") == "1", reason="COURSE_SKIP_SERVE_INSTALL=1"
)
def test_a_fresh_serving_environment_serves_an_onnx_model(tmp_path: Path) -> None:
    env_dir = tmp_path / "serve-env"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "--quiet"]
    skip_unless_the_index_answers(pip, tmp_path / "probe")
    subprocess.run([*pip, "install", "-r", str(REQUIREMENTS)], check=True, timeout=600)
    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ there
    for package in ("course_utils", "serving"):
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(REPO_ROOT / package, source / package, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO_ROOT / name, source / name)
    subprocess.run([*pip, "install", "--no-deps", str(source)], check=True, timeout=600)
    missing = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.util as u, json; "
            f"print(json.dumps([m for m in {list(FORBIDDEN)!r} if u.find_spec(m)]))",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert missing.stdout.strip() == "[]", f"the serving set pulled in {missing.stdout}"

    torch.manual_seed(0)
    model = FashionCNN().eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.onnx.export(
        model, (torch.zeros(2, 1, 28, 28),), dynamo=True, dynamic_shapes={"x": {0: batch}}
    )
    model_path = save_atomically(program.save, tmp_path / "model.onnx")
    pixels = np.zeros((28, 28), np.uint8)
    pixels[4:24, 8:20] = np.linspace(80, 255, 12).astype(np.uint8)
    with torch.inference_mode():
        expected = int(model(torch.from_numpy(normalise_array(pixels))).argmax(1))

    server = subprocess.Popen(  # from tmp_path: the installed package, not this checkout
        [str(python), "-m", "serving.serve", "serve", "--model", str(model_path)] + ["--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(server.stdout.readline()))
        reader.start()
        reader.join(120)
        assert line and line[0].startswith("listening on http://127.0.0.1:"), line
        url = line[0].split()[-1]
        response = requests.post(
            f"{url}/predict", files={"file": ("g.png", io.BytesIO(encode_png(pixels)))}, timeout=30
        )
        assert response.status_code == 200, response.text
        assert response.json()["class_index"] == expected
    finally:
        server.send_signal(2)
        try:
            _, err = server.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            _, err = server.communicate()
    assert "Traceback" not in err, err
    assert sys.executable != str(python)


def test_an_unreachable_index_skips_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No index (a closed local port): the probe turns the install test into a skip that says
    why, instead of a failure."""
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    with pytest.raises(pytest.skip.Exception, match="cannot be reached: .+"):
        skip_unless_the_index_answers(pip, tmp_path)
