"""The book's "Try the model" page: chapter 8's ONNX file and ONNX Runtime Web in the static site.

- :func:`stage_model` copies chapter 8's ``fashion_cnn.onnx`` (and its ``.sha256``) into the
  staged site, where Sphinx's ``html_extra_path`` puts it at ``models/`` of the built book, and
  writes ``models/manifest.json``: what the page needs to know (input and output names, classes,
  normalisation, the file's SHA-256), or, when chapter 8 has not been run, why the model is
  missing and how to make it. The page reads the manifest first, so a missing model is a
  message, never a broken page;
- :func:`vendor` re-vendors ONNX Runtime Web from the npm registry (``npm pack`` of the pinned
  :data:`ORT_WEB_VERSION`): only the WebAssembly-only ES-module bundle and its ``.wasm``, into
  ``book/_static/ort/``, with their SHA-256 and sizes in ``ort-web.json``;
  :func:`verify_vendored` checks the committed files against that record.

Command line::

    python -m course_utils.build.web_model vendor   # (make vendor-ort) fetch and record
    python -m course_utils.build.web_model verify   # check the vendored files' SHA-256
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from ..artefacts import ModelFileError, sha256_of, verified
from ..data import CLASSES, MEAN, STD
from ..export import ONNX_INPUT, ONNX_OUTPUT, export_dir
from ..paths import REPO_ROOT

__all__ = [
    "MODEL_NAME",
    "ORT_DIR",
    "ORT_FILES",
    "ORT_WEB_VERSION",
    "stage_model",
    "vendor",
    "verify_vendored",
]

ORT_WEB_VERSION = "1.31.1"
"""The exact ``onnxruntime-web`` version vendored into the book."""
ORT_FILES = ("ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.wasm")
"""The two files the page needs, from the package's ``dist/``: the WebAssembly-only bundle (an
ES module that includes the Emscripten loader) and the WebAssembly binary it instantiates."""
ORT_DIR = REPO_ROOT / "book" / "_static" / "ort"
MODEL_NAME = "fashion_cnn.onnx"


def vendor(version: str = ORT_WEB_VERSION, dest: Path = ORT_DIR) -> dict[str, object]:
    """``npm pack onnxruntime-web@version`` and copy :data:`ORT_FILES` to ``dest``, recording
    each file's SHA-256 and size in ``dest/ort-web.json``."""
    if shutil.which("npm") is None:
        raise RuntimeError("npm is not installed: apt-get install npm (or install Node.js)")
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            ["npm", "pack", f"onnxruntime-web@{version}", "--silent"],
            cwd=tmp,
            capture_output=True,
            text=True,
        )
        if done.returncode:
            raise RuntimeError(f"npm pack onnxruntime-web@{version} failed:\n{done.stderr}")
        tarball = Path(tmp) / done.stdout.strip().splitlines()[-1]
        with tarfile.open(tarball) as archive:
            archive.extractall(tmp, filter="data")
        package = Path(tmp) / "package"
        dest.mkdir(parents=True, exist_ok=True)
        for name in ORT_FILES:
            shutil.copy2(package / "dist" / name, dest / name)
    record = {
        "package": "onnxruntime-web",
        "version": version,
        "source": f"npm pack onnxruntime-web@{version}, files from dist/",
        "license": "MIT (package.json; the bundle's header keeps Microsoft's copyright line)",
        "refresh": "make vendor-ort  (python -m course_utils.build.web_model vendor)",
        "files": {
            name: {"sha256": sha256_of(dest / name), "bytes": (dest / name).stat().st_size}
            for name in ORT_FILES
        },
    }
    (dest / "ort-web.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def verify_vendored(dest: Path = ORT_DIR) -> dict[str, object]:
    """The recorded ``ort-web.json`` after checking every file in it; raises on a mismatch."""
    record = json.loads((dest / "ort-web.json").read_text())
    for name, info in record["files"].items():
        path = dest / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `make vendor-ort`")
        if sha256_of(path) != info["sha256"]:
            raise ValueError(f"{path} does not match ort-web.json: run `make vendor-ort`")
    return record


def _unverified(model: Path) -> str:
    """Why ``model`` fails its SHA-256 sidecar check (the first sentence), or ``""``."""
    try:
        verified(model, "ONNX model", require_sidecar=True)
    except ModelFileError as err:
        return str(err).split(";")[0]
    return ""


def stage_model(site: Path, quick: bool, source: Path | None = None) -> Path:
    """Copy chapter 8's ONNX file into ``site/book/_extra/models/`` and write its manifest.

    Args:
        site: the staged book sources (``_build/site_src``).
        quick: take the quick-mode export (``checkpoints/08_export_quick/``).
        source: the folder to take ``fashion_cnn.onnx`` from; default :func:`export_dir`.

    Returns:
        The manifest's path. It says ``"available": false`` (and why) when the file, or its
        ``.sha256``, is missing or does not match.
    """
    source = export_dir(quick) if source is None else Path(source)
    models = site / "book" / "_extra" / "models"
    shutil.rmtree(models, ignore_errors=True)
    models.mkdir(parents=True)
    model, sidecar = source / MODEL_NAME, source / f"{MODEL_NAME}.sha256"
    run = "python -m course_utils.build.pipeline execute" + (" --quick" if quick else "")
    manifest: dict[str, object] = {"available": False, "quick": quick}
    if not model.is_file() or not sidecar.is_file():
        manifest["reason"] = (
            f"chapter 8 has not exported {MODEL_NAME} (with its .sha256) yet, so this build of "
            f"the book has no model. Run chapter 8 (`{run} --only 08`), then rebuild the book."
        )
    elif problem := _unverified(model):
        manifest["reason"] = f"{problem}. Run chapter 8 again (`{run} --only 08`), then rebuild."
    else:
        shutil.copy2(model, models / MODEL_NAME)
        shutil.copy2(sidecar, models / sidecar.name)
        manifest.update(
            available=True,
            file=MODEL_NAME,
            sha256=sha256_of(model),
            bytes=model.stat().st_size,
            input=ONNX_INPUT,
            output=ONNX_OUTPUT,
            size=28,
            classes=list(CLASSES),
            mean=MEAN,
            std=STD,
        )
    path = models / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["vendor", "verify"])
    args = parser.parse_args(argv)
    record = vendor() if args.command == "vendor" else verify_vendored()
    for name, info in record["files"].items():
        print(f"{name}: {info['bytes']:,} bytes, sha256 {info['sha256']}")
    print(f"onnxruntime-web {record['version']} in {ORT_DIR}")


if __name__ == "__main__":
    main()
