"""course_utils.artefacts: the SHA-256 sidecar, in every form ``sha256sum`` writes, and damaged."""

from __future__ import annotations

from pathlib import Path

import pytest

from course_utils.artefacts import ModelFileError, save_atomically, sha256_of, verified

WRONG = "0123456789abcdef" * 4  # a well-formed hash of some other file


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    """A saved ``model.onnx`` (any bytes do) with the sidecar ``save_atomically`` writes."""
    return save_atomically(lambda tmp: tmp.write_bytes(b"weights" * 100), tmp_path / "model.onnx")


@pytest.mark.parametrize(
    "line",
    [
        "{hex}  model.onnx\n",  # sha256sum (what save_atomically writes)
        "{hex} *model.onnx\n",  # sha256sum --binary
        "{HEX}  model.onnx\n",  # an upper-case hash
        "SHA256 (model.onnx) = {hex}\n",  # sha256sum --tag (BSD)
        "SHA256 (model.onnx) = {HEX}",
        "{hex}",
    ],
    ids=["gnu", "gnu-binary", "upper", "bsd-tag", "bsd-tag-upper", "bare"],
)
def test_every_correct_sidecar_form_is_accepted_and_checked(model_file: Path, line: str) -> None:
    """Breaks if a correct sidecar (upper-case hex, ``--tag`` format) is refused, or if a form
    is accepted without its hash being compared with the file's."""
    sidecar = model_file.with_name("model.onnx.sha256")
    digest = sha256_of(model_file)
    sidecar.write_text(line.format(hex=digest, HEX=digest.upper()))
    assert verified(model_file, "ONNX model", require_sidecar=True) == model_file
    sidecar.write_text(line.format(hex=WRONG, HEX=WRONG.upper()))
    with pytest.raises(ModelFileError, match="does not match its recorded SHA-256"):
        verified(model_file, "ONNX model", require_sidecar=True)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b" \n\n",
        bytes(range(256)) * 4,  # binary garbage: not even UTF-8
        b"not a hash  model.onnx\n",
        b"0123456789abcdef  model.onnx\n",  # a truncated hash
        b"SHA256 (model.onnx) = \n",
    ],
    ids=["empty", "blank", "binary", "text", "short-hash", "bsd-no-hash"],
)
def test_an_empty_or_malformed_sidecar_is_refused_with_what_to_do(
    model_file: Path, content: bytes
) -> None:
    """Breaks if an empty sidecar lets any file through, if garbage raises UnicodeDecodeError,
    or if a malformed sidecar is reported as a mismatch (the file is fine, the sidecar is not)."""
    model_file.with_name("model.onnx.sha256").write_bytes(content)
    for require in (False, True):
        with pytest.raises(ModelFileError, match="malformed") as info:
            verified(model_file, "ONNX model", require_sidecar=require)
        assert "sha256sum model.onnx > model.onnx.sha256" in str(info.value)
