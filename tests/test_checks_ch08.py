"""Chapter 8 ``check_*`` helpers: the right answer passes, each typical mistake fails."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from checks_support import fails, passes
from torch import nn

from course_utils import export as course_export
from course_utils.checks.ch08 import check_cond_export, check_export_and_parity, check_traced_file
from course_utils.export import InvertIfBright, export_model
from course_utils.models import FashionCNN


@pytest.fixture(scope="module")
def model() -> FashionCNN:
    """A small CNN with dropout and BatchNorm (non-default running statistics), in eval mode."""
    torch.manual_seed(0)
    cnn = FashionCNN(width=4, hidden=16, norm="batch", dropout=0.5)
    with torch.no_grad():
        for _ in range(3):
            cnn(torch.randn(32, 1, 28, 28) * 1.5 + 0.3)
    return cnn.eval()


def trace(model: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.trace(model, torch.zeros(2, 1, 28, 28))


# --- 8.1 ---------------------------------------------------------------------------------------


def test_traced_file_right_answer_passes(
    model: FashionCNN, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "traced.pt"
    trace(model).save(str(path))
    check_traced_file(str(path), model)
    passes(lambda p: check_traced_file(p, model), path, "8.1", capsys)


def test_traced_file_state_dict_fails(
    model: FashionCNN, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    fails(lambda p: check_traced_file(p, model), path, "written by torch.save", "8.1", capsys)


def test_traced_file_missing_or_none_fails(
    model: FashionCNN, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fails(lambda p: check_traced_file(p, model), None, "traced.save(path)", "8.1", capsys)
    fails(lambda p: check_traced_file(p, model), tmp_path / "x.pt", "first", "8.1", capsys)


def test_traced_file_other_weights_fails(
    model: FashionCNN, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "traced.pt"
    torch.manual_seed(1)
    trace(FashionCNN(width=4, hidden=16, norm="batch", dropout=0.5).eval()).save(str(path))
    fails(lambda p: check_traced_file(p, model), path, "trained weights", "8.1", capsys)


def test_traced_file_of_another_module_fails(
    model: FashionCNN, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "linear.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(nn.Linear(784, 10), torch.zeros(2, 784)).save(str(path))
    fails(lambda p: check_traced_file(p, model), path, "trace the classifier", "8.1", capsys)


class NaNLogits(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * float("nan")


def test_traced_file_with_nan_outputs_fails(
    model: FashionCNN, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """NaN logits: |NaN - x| > tol is False, so the comparison used to let them through."""
    path = tmp_path / "traced.pt"
    trace(NaNLogits(model).eval()).save(str(path))
    fails(lambda p: check_traced_file(p, model), path, "NaN or infinite logits", "8.1", capsys)


@pytest.mark.parametrize(
    ("dropout", "hint"),
    [(0.5, "dropout was recorded"), (0.0, "BatchNorm was recorded")],
    ids=["traced_in_train_mode_dropout", "traced_in_train_mode_batchnorm_only"],
)
def test_traced_in_training_mode_fails(
    dropout: float, hint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    cnn = FashionCNN(width=4, hidden=16, norm="batch", dropout=dropout).train()
    path = tmp_path / "traced.pt"
    trace(cnn).save(str(path))
    fails(lambda p: check_traced_file(p, cnn), path, hint, "8.1", capsys)
    assert cnn.training, "the check restores the model's mode"


# --- 8.2 ---------------------------------------------------------------------------------------


def parity(reference: nn.Module, candidate: nn.Module, batch_sizes=(1, 7, 64)) -> float:
    worst = 0.0
    with torch.inference_mode():
        for n in batch_sizes:
            x = torch.randn(n, 1, 28, 28)
            worst = max(worst, float((reference(x) - candidate(x)).abs().max()))
    return worst


def make_export_and_check(**mistakes: bool) -> Callable[[nn.Module, Path], float]:
    """The right ``export_and_check``, or one with a single typical mistake switched on."""

    def export_and_check(model: nn.Module, path: Path) -> float:
        if mistakes.get("train_mode_batch_of_one"):
            program = torch.export.export(model, (torch.randn(8, 1, 28, 28),))
            return parity(model, program.module(), (1,))
        if not mistakes.get("train_mode"):
            model.eval()
        example = torch.randn(8, 1, 28, 28)
        batch = torch.export.Dim("batch", min=1, max=1024)
        fixed = mistakes.get("fixed_batch") or mistakes.get("fixed_batch_checked")
        shapes = None if fixed else {"x": {0: batch}}
        program = torch.export.export(model, (example,), dynamic_shapes=shapes)
        if mistakes.get("torch_save"):
            torch.save(program.state_dict, path)
            return 0.0
        if mistakes.get("no_file"):
            return parity(model, program.module(), (8,))
        torch.export.save(program, path)
        loaded = torch.export.load(path)
        sizes = (
            (8,)
            if mistakes.get("fixed_batch")
            else (7, 64)
            if mistakes.get("train_mode")
            else (1, 7, 64)
        )
        result = parity(model, loaded.module(), sizes)
        return torch.tensor(result) if mistakes.get("tensor") else result

    return export_and_check


def honest(export_and_check: Callable | None = None, parity_fn: Callable = parity):
    return lambda _: check_export_and_parity(export_and_check or make_export_and_check(), parity_fn)


def test_export_and_parity_right_answer_passes(capsys: pytest.CaptureFixture[str]) -> None:
    passes(honest(), None, "8.2", capsys)


def parity_batch_one_only(reference, candidate, batch_sizes=(1, 7, 64)) -> float:
    return parity(reference, candidate, (1,))


def parity_signed(reference, candidate, batch_sizes=(1, 7, 64)) -> float:
    with torch.inference_mode():
        return max(
            float((reference(x) - candidate(x)).max())
            for x in (torch.randn(n, 1, 28, 28) for n in batch_sizes)
        )


def parity_mean(reference, candidate, batch_sizes=(1, 7, 64)) -> float:
    with torch.inference_mode():
        return max(
            float((reference(x) - candidate(x)).abs().mean())
            for x in (torch.randn(n, 1, 28, 28) for n in batch_sizes)
        )


def parity_first_row(reference, candidate, batch_sizes=(1, 7, 64)) -> float:
    with torch.inference_mode():
        return max(
            float((reference(x)[0] - candidate(x)[0]).abs().max())
            for x in (torch.randn(n, 1, 28, 28) for n in batch_sizes)
        )


def parity_swallows_errors(reference, candidate, batch_sizes=(1, 7, 64)) -> float:
    worst = 0.0
    for n in batch_sizes:
        try:
            worst = max(worst, parity(reference, candidate, (n,)))
        except Exception:
            continue
    return worst


def parity_different_inputs(reference, candidate, batch_sizes=(1, 7, 64)) -> float:
    with torch.inference_mode():
        return max(
            float(
                (reference(torch.randn(n, 1, 28, 28)) - candidate(torch.randn(n, 1, 28, 28)))
                .abs()
                .max()
            )
            for n in batch_sizes
        )


def parity_argmax(reference, candidate, batch_sizes=(1, 7, 64)) -> float:
    """Compares predicted classes: 0.01 on one logit rarely changes one."""
    with torch.inference_mode():
        return max(
            float((reference(x).argmax(1) != candidate(x).argmax(1)).float().max())
            for x in (torch.randn(n, 1, 28, 28) for n in batch_sizes)
        )


def parity_sum(reference, candidate, batch_sizes=(1, 7, 64)) -> float:
    """The sum of the absolute differences: equal to the max when one logit differs."""
    with torch.inference_mode():
        return max(
            float((reference(x) - candidate(x)).abs().sum())
            for x in (torch.randn(n, 1, 28, 28) for n in batch_sizes)
        )


def parity_skips_first_row(reference, candidate, batch_sizes=(1, 7, 64)) -> float:
    with torch.inference_mode():
        return max(
            float(
                torch.cat([(reference(x) - candidate(x))[1:].abs().flatten(), torch.zeros(1)]).max()
            )
            for x in (torch.randn(n, 1, 28, 28) for n in batch_sizes)
        )


@pytest.mark.parametrize(
    ("wrong_parity", "hint"),
    [
        (parity_argmax, "compare the logits themselves"),
        (parity_sum, "not a sum or a norm"),
        (parity_skips_first_row, "the batch of one image included"),
    ],
    ids=["parity_compares_argmax", "parity_sums_differences", "parity_skips_first_row"],
)
def test_parity_hint_names_what_was_measured(
    wrong_parity: Callable, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An argmax parity was told "compare every row"; a sum passed (every planted fault had one
    logit off, where sum and max agree); a parity skipping row 0 was told "try every size"."""
    fails(honest(parity_fn=wrong_parity), None, hint, "8.2", capsys)


def export_and_check_of_the_program_in_memory(model: nn.Module, path: Path) -> float:
    """Saves the file, but tests the program before it was saved, not the file."""
    model.eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(
        model, (torch.randn(8, 1, 28, 28),), dynamic_shapes={"x": {0: batch}}
    )
    torch.export.save(program, path)
    return parity(model, program.module())


def export_and_check_of_the_model_itself(model: nn.Module, path: Path) -> float:
    make_export_and_check()(model, path)
    return parity(model, model)


def export_and_check_nan_file(model: nn.Module, path: Path) -> float:
    """A file whose program gives NaN logits, and a reported 0.0."""
    model.eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(
        NaNLogits(model), (torch.randn(8, 1, 28, 28),), dynamic_shapes={"x": {0: batch}}
    )
    torch.export.save(program, path)
    return 0.0


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (export_and_check_of_the_program_in_memory, "test the file"),
        (export_and_check_of_the_model_itself, "test the file"),
        (export_and_check_nan_file, "NaN or infinite logits"),
    ],
    ids=["tests_the_program_not_the_file", "tests_the_model_against_itself", "nan_file"],
)
def test_export_and_check_must_test_its_file(
    answer: Callable, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The file was right, so the number export_and_check returned could not be told from one
    computed without the file: the check now hands back a program off by 0.01 from
    torch.export.load and expects to see it."""
    fails(honest(answer), None, hint, "8.2", capsys)


@pytest.mark.parametrize(
    ("wrong_parity", "hint"),
    [
        (parity_batch_one_only, "loop over batch_sizes"),
        (parity_signed, "absolute value before the max"),
        (parity_mean, "not a mean"),
        (parity_first_row, "compare every row"),
        (parity_swallows_errors, "do not swallow the error"),
        (parity_different_inputs, "feed the same input to both"),
    ],
    ids=[
        "parity_ignores_batch_sizes",
        "parity_signed_max_without_abs",
        "parity_mean_not_max",
        "parity_first_row_only",
        "parity_swallows_refused_batch",
        "parity_different_inputs_per_model",
    ],
)
def test_parity_wrong_answer_fails(
    wrong_parity: Callable, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fails(honest(parity_fn=wrong_parity), None, hint, "8.2", capsys)


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ("fixed_batch", "declare the batch dimension dynamic"),
        ("fixed_batch_checked", "accepts only the example's batch size"),
        ("train_mode", "model.eval() first"),
        ("train_mode_batch_of_one", "still in training mode"),
        ("torch_save", "not torch.save"),
        ("no_file", "wrote no file"),
        ("tensor", "not a float"),
    ],
    ids=[
        "export_without_dynamic_batch",
        "export_without_dynamic_batch_caught_by_own_parity",
        "export_in_training_mode",
        "export_in_training_mode_crashes_on_one_image",
        "saved_with_torch_save",
        "no_file_written",
        "returns_a_tensor",
    ],
)
def test_export_and_check_wrong_answer_fails(
    mistake: str, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fails(honest(make_export_and_check(**{mistake: True})), None, hint, "8.2", capsys)


def shortcut_export(model: nn.Module, path: Path) -> float:
    model.eval()
    program = course_export.export_model(model, torch.randn(8, 1, 28, 28))
    course_export.save_exported(program, path)
    loaded = course_export.load_exported(path)
    return course_export.max_abs_diff(model, loaded.module(), torch.randn(5, 1, 28, 28))


def shortcut_parity(reference, candidate, batch_sizes=(1, 7, 64)) -> float:
    return max(
        course_export.max_abs_diff(reference, candidate, torch.randn(n, 1, 28, 28))
        for n in batch_sizes
    )


def alias_parity(reference, candidate, batch_sizes=(1, 7, 64)) -> float:
    return max(max_abs_diff(reference, candidate, torch.randn(n, 1, 28, 28)) for n in batch_sizes)


max_abs_diff = course_export.max_abs_diff  # as `from course_utils.export import max_abs_diff`


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        (honest(shortcut_export), "course_utils.export.export_model"),
        (honest(parity_fn=shortcut_parity), "course_utils.export.max_abs_diff"),
        (honest(parity_fn=alias_parity), ".max_abs_diff"),
    ],
    ids=["package_export_and_save", "package_max_abs_diff", "imported_max_abs_diff_alias"],
)
def test_export_shortcuts_are_refused(
    answer: Callable, label: str, capsys: pytest.CaptureFixture[str]
) -> None:
    originals = {n: getattr(course_export, n) for n in ("export_model", "max_abs_diff")}
    fails(answer, None, label, "8.2", capsys)
    for name, original in originals.items():
        assert getattr(course_export, name) is original, f"{name} was not restored"
    assert globals()["max_abs_diff"] is originals["max_abs_diff"], "the alias was not restored"


def test_export_and_parity_passes_not_implemented_through() -> None:
    def blank(*args: object) -> float:
        raise NotImplementedError("Exercise 8.2")

    with pytest.raises(NotImplementedError):
        check_export_and_parity(make_export_and_check(), blank)
    with pytest.raises(NotImplementedError):
        check_export_and_parity(blank, parity)


# --- 8.3 ---------------------------------------------------------------------------------------


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
    passes(check_cond_export, CondInvert, "8.3", capsys)


def test_python_if_fails_with_torch_cond_hint(capsys: pytest.CaptureFixture[str]) -> None:
    fails(check_cond_export, InvertIfBright, "torch.cond", "8.3", capsys)


class WhereInvert(InvertIfBright):
    """torch.where: exports, and matches on every batch, but it is not torch.cond."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.where(x.mean() > self.threshold, 1 - x, x)
        return self.classifier((x - self.mean) / self.std)


class BlendInvert(InvertIfBright):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bright = (x.mean() > self.threshold).float()
        x = bright * (1 - x) + (1 - bright) * x
        return self.classifier((x - self.mean) / self.std)


class FirstImageCond(InvertIfBright):
    """Decides by the first image only: all-dark and all-bright batches could not tell."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cond(x[0].mean() > self.threshold, lambda t: 1.0 - t, lambda t: t.clone(), (x,))
        return self.classifier((x - self.mean) / self.std)


class LastImageCond(InvertIfBright):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cond(x[-1].mean() > self.threshold, lambda t: 1.0 - t, lambda t: t.clone(), (x,))
        return self.classifier((x - self.mean) / self.std)


class TypedThresholdCond(InvertIfBright):
    """0.5 typed in: the default threshold could not tell it from self.threshold."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cond(x.mean() > 0.5, lambda t: 1.0 - t, lambda t: t.clone(), (x,))
        return self.classifier((x - self.mean) / self.std)


class NotNormalisedCond(InvertIfBright):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cond(x.mean() > self.threshold, lambda t: 1.0 - t, lambda t: t.clone(), (x,))
        return self.classifier(x)


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (SwappedCond, "the program inverted a dark batch"),
        (NeverInverts, "no torch.cond"),
        (NotNormalisedCond, "normalise after choosing the branch"),
    ],
    ids=["swapped_branches", "no_cond", "not_normalised"],
)
def test_wrong_branch_fails(
    wrong: type[nn.Module], hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fails(check_cond_export, wrong, hint, "8.3", capsys)


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (WhereInvert, "torch.where computes both branches"),
        (BlendInvert, "with no cond"),
        (FirstImageCond, "decide once, for the whole batch"),
        (LastImageCond, "decide once, for the whole batch"),
        (TypedThresholdCond, "compare with self.threshold"),
    ],
    ids=[
        "torch_where",
        "arithmetic_blend",
        "first_image_decides",
        "last_image_decides",
        "typed_0.5",
    ],
)
def test_cond_export_holes_closed(
    wrong: type[nn.Module], hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each of these matched InvertIfBright on the old all-dark and all-bright batches."""
    fails(check_cond_export, wrong, hint, "8.3", capsys)


def test_cond_export_passes_not_implemented_through() -> None:
    class Blank(InvertIfBright):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise NotImplementedError("Exercise 8.3")

    with pytest.raises(NotImplementedError):
        check_cond_export(Blank)


def test_export_model_still_used_by_the_check_is_the_package_s() -> None:
    assert export_model is course_export.export_model
