"""Chapter 8 ``check_*`` helpers: the right answer passes, each typical mistake fails."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from course_utils.checks.ch08 import check_cond_export, check_dynamic_export, check_traced_file
from course_utils.export import InvertIfBright, export_model
from course_utils.models import FashionCNN


@pytest.fixture(scope="module")
def model() -> FashionCNN:
    torch.manual_seed(0)
    return FashionCNN(width=4, hidden=16).eval()


def trace(model: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.trace(model, torch.zeros(2, 1, 28, 28))


def test_traced_file_right_answer_passes(
    model: FashionCNN, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "traced.pt"
    trace(model).save(str(path))
    check_traced_file(path, model)
    check_traced_file(str(path), model)
    assert capsys.readouterr().out.startswith("✅ Exercise 8.1:")


def test_traced_file_state_dict_fails(model: FashionCNN, tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(AssertionError, match="written by torch.save"):
        check_traced_file(path, model)


def test_traced_file_missing_or_none_fails(model: FashionCNN, tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="path is None"):
        check_traced_file(None, model)
    with pytest.raises(AssertionError, match="no file"):
        check_traced_file(tmp_path / "nothing.pt", model)


def test_traced_file_other_weights_fails(model: FashionCNN, tmp_path: Path) -> None:
    path = tmp_path / "traced.pt"
    trace(FashionCNN(width=4, hidden=16).eval()).save(str(path))  # a fresh, untrained model
    with pytest.raises(AssertionError, match="trained weights"):
        check_traced_file(path, model)


def test_traced_file_of_another_module_fails(model: FashionCNN, tmp_path: Path) -> None:
    path = tmp_path / "linear.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(nn.Linear(784, 10), torch.zeros(2, 784)).save(str(path))
    with pytest.raises(AssertionError, match="trace the classifier itself"):
        check_traced_file(path, model)


def test_traced_file_in_training_mode_fails(tmp_path: Path) -> None:
    torch.manual_seed(0)
    with_dropout = FashionCNN(width=4, hidden=16, dropout=0.5).train()
    path = tmp_path / "traced.pt"
    trace(with_dropout).save(str(path))
    with pytest.raises(AssertionError, match=r"model\.eval\(\) before torch\.jit\.trace"):
        check_traced_file(path, with_dropout)
    assert with_dropout.training, "the check restores the model's mode"


def test_dynamic_export_right_answer_passes(
    model: FashionCNN, capsys: pytest.CaptureFixture[str]
) -> None:
    check_dynamic_export(export_model(model, torch.zeros(8, 1, 28, 28)), model)
    assert capsys.readouterr().out.startswith("✅ Exercise 8.2:")


def test_fixed_batch_export_fails(model: FashionCNN) -> None:
    program = torch.export.export(model, (torch.zeros(8, 1, 28, 28),))
    with pytest.raises(AssertionError, match="declare the batch dimension dynamic"):
        check_dynamic_export(program, model)


def test_export_module_instead_of_program_fails(model: FashionCNN) -> None:
    program = export_model(model, torch.zeros(8, 1, 28, 28))
    with pytest.raises(AssertionError, match="not an ExportedProgram"):
        check_dynamic_export(program.module(), model)


def test_export_of_other_weights_fails(model: FashionCNN) -> None:
    other = FashionCNN(width=4, hidden=16).eval()
    with pytest.raises(AssertionError, match="outputs differ"):
        check_dynamic_export(export_model(other, torch.zeros(8, 1, 28, 28)), model)


class CondInvert(InvertIfBright):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cond(x.mean() > self.threshold, lambda t: 1.0 - t, lambda t: t.clone(), (x,))
        return self.classifier((x - self.mean) / self.std)


class SwappedCond(InvertIfBright):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cond(x.mean() > self.threshold, lambda t: t.clone(), lambda t: 1.0 - t, (x,))
        return self.classifier((x - self.mean) / self.std)


class NeverInverts(InvertIfBright):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier((x - self.mean) / self.std)


def test_cond_export_right_answer_passes(capsys: pytest.CaptureFixture[str]) -> None:
    check_cond_export(CondInvert)
    assert capsys.readouterr().out.startswith("✅ Exercise 8.3:")


def test_python_if_fails_with_torch_cond_hint() -> None:
    with pytest.raises(AssertionError, match=r"torch\.cond"):
        check_cond_export(InvertIfBright)


@pytest.mark.parametrize("wrong", [SwappedCond, NeverInverts])
def test_wrong_branch_fails(wrong: type[nn.Module]) -> None:
    with pytest.raises(AssertionError, match="batch"):
        check_cond_export(wrong)


def test_cond_export_passes_not_implemented_through() -> None:
    class Blank(InvertIfBright):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise NotImplementedError("Exercise 8.3")

    with pytest.raises(NotImplementedError):
        check_cond_export(Blank)
