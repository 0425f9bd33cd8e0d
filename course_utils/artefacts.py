"""Model files on disk: atomic writes with a SHA-256 sidecar, and the check before loading.

Every model file (checkpoint ``.pt``, TorchScript ``.pt``, ``.pt2``, ``.onnx``) is written to a
temporary name, its SHA-256 recorded in ``<file>.sha256`` (``sha256sum`` format, so ``sha256sum -c``
also checks it), then renamed into place. Loading checks the file against the sidecar first; a
sidecar written by ``sha256sum`` (with or without ``--tag``, any case of hex) is accepted too. This
module imports neither torch nor the course's models: the serving process uses it with ONNX
Runtime alone.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path

__all__ = ["ModelFileError", "save_atomically", "sha256_of", "sidecar_path", "verified"]

# GNU ``HASH  name`` / ``HASH *name``, or BSD ``SHA256 (name) = HASH`` (``sha256sum --tag``).
_SIDECAR = re.compile(r"(?:SHA256 \(.*\) = )?([0-9a-fA-F]{64})(?:\s.*)?", re.DOTALL)


class ModelFileError(RuntimeError):
    """A saved model file is missing, truncated, corrupted, or not the expected format."""


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sidecar_path(path: str | Path) -> Path:
    """Where the SHA-256 of ``path`` is recorded: ``<path>.sha256``."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def save_atomically(write: Callable[[Path], None], path: str | Path) -> Path:
    """Write with ``write(tmp)``, record the SHA-256 beside it, then rename into place.

    A crash part-way leaves either the old file with its old sidecar or no file, never a
    half-written file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name keeps the suffix: torch.export.save/load insist on ".pt2".
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        write(tmp)
        sidecar = sidecar_path(path)
        sidecar_tmp = sidecar.with_name(f".{sidecar.name}.tmp")
        sidecar_tmp.write_text(f"{sha256_of(tmp)}  {path.name}\n")
        os.replace(sidecar_tmp, sidecar)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def verified(path: str | Path, what: str, require_sidecar: bool = False) -> Path:
    """``path`` after checking it exists and matches its recorded SHA-256.

    With ``require_sidecar=True`` (what a server uses) a missing ``.sha256`` is an error too;
    otherwise a file without one is accepted unchecked.

    Raises:
        ModelFileError: missing or empty file, missing (when required) or malformed sidecar, or
            a mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{what} file {path} does not exist; save the model first")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{what} file {path} is empty: the save was interrupted; save again")
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        if require_sidecar:
            raise ModelFileError(
                f"{what} file {path} has no {sidecar.name} beside it, so it cannot be verified; "
                "export it again with the course's save functions (they write the sidecar), "
                f"or record the hash yourself: sha256sum {path.name} > {sidecar.name}"
            )
        return path
    found = _SIDECAR.fullmatch(sidecar.read_bytes().decode(errors="replace").strip())
    if not found:
        raise ModelFileError(
            f"{what} file {path}: {sidecar.name} is malformed (empty, or no SHA-256 as sha256sum "
            f"writes it); save the model again, or run: sha256sum {path.name} > {sidecar.name}"
        )
    expected, actual = found[1].lower(), sha256_of(path)
    if actual != expected:
        raise ModelFileError(
            f"{what} file {path} does not match its recorded SHA-256 ({sidecar.name}): "
            f"expected {expected[:12]}…, got {actual[:12]}…; the file was truncated or "
            "corrupted after saving: save it again or copy it again"
        )
    return path
