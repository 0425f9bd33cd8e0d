"""Chapter 7 ``check_*`` helpers: the right answer passes, each typical mistake fails."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from course_utils.checks.ch07 import check_png_dataset
from course_utils.data import standard_transform
from course_utils.pngfolder import BadImageError


def _fails(check: Callable[[object], None], answer: object, hint: str, capsys) -> None:
    with pytest.raises(AssertionError) as err:
        check(answer)
    assert hint in str(err.value)
    assert "❌ Exercise" in capsys.readouterr().out


class _Base(torch.utils.data.Dataset):
    def __init__(self, root: Path) -> None:
        self.classes = sorted(p.name for p in Path(root).iterdir() if p.is_dir())
        self.samples = [
            (p, c)
            for c, name in enumerate(self.classes)
            for p in sorted((root / name).glob("*.png"))
        ]
        self.transform = standard_transform()

    def __len__(self) -> int:
        return len(self.samples)


class _Right(_Base):
    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        try:
            with Image.open(path) as img:
                image = img.convert("L")
        except OSError as err:
            raise BadImageError(f"{path}: {err}") from err
        return self.transform(image), label


class _NoNames(_Base):
    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        with Image.open(path) as img:
            return self.transform(img.convert("L")), label


class _NotNormalised(_Right):
    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = super().__getitem__(i)
        return x * 0.353 + 0.286, y


class _WrongLabel(_Right):
    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = super().__getitem__(i)
        return x, (y + 1) % 3


class _NoChannel(_Right):
    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = super().__getitem__(i)
        return x[0], y


class _ShortLen(_Right):
    def __len__(self) -> int:
        return len(self.samples) - 1


def test_png_dataset_right_answer_passes(capsys: pytest.CaptureFixture[str]) -> None:
    check_png_dataset(_Right)
    from course_utils.pngfolder import PNGFolder

    check_png_dataset(lambda root: PNGFolder(root, on_error="raise"))
    assert capsys.readouterr().out.count("✅ Exercise 7.1:") == 2


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (_NoNames, "names the file"),
        (_NotNormalised, "normalise"),
        (_WrongLabel, "label stored"),
        (_NoChannel, "expected a tensor of shape"),
        (_ShortLen, "len(self.samples)"),
    ],
)
def test_png_dataset_wrong_answers_fail(answer, hint, capsys) -> None:
    _fails(check_png_dataset, answer, hint, capsys)
