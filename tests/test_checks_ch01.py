"""Chapter 1 ``check_*`` helpers: the right answer passes, each typical mistake fails."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from course_utils.checks.ch01 import (
    check_conv_shapes,
    check_dynamic_flatten,
    check_evaluate_fn,
    check_per_class_accuracy,
)

# --- 1.1: shapes by hand ------------------------------------------------------------------------

RIGHT_SHAPES = {
    "conv1": (32, 28, 28),
    "pool1": (32, 14, 14),
    "conv2": (64, 14, 14),
    "pool2": (64, 7, 7),
    "flatten": 3136,
    "flatten_36": 5184,
}


def test_conv_shapes_right_answer_passes(capsys: pytest.CaptureFixture[str]) -> None:
    check_conv_shapes(RIGHT_SHAPES)
    check_conv_shapes(tuple(RIGHT_SHAPES.values()))
    check_conv_shapes({k: list(v) if isinstance(v, tuple) else v for k, v in RIGHT_SHAPES.items()})
    assert capsys.readouterr().out.startswith("✅ Exercise 1.1:")


@pytest.mark.parametrize(
    ("stage", "value", "hint"),
    [
        ("conv1", (32, 26, 26), "padding=1"),  # forgot the padding
        ("pool1", (32, 13, 13), "halves"),
        ("conv2", (32, 14, 14), "out_channels"),  # kept the input channels
        ("pool2", (64, 7), "forward pass"),  # not a (C, H, W) triple
        ("pool2", (1, 64, 7, 7), "batch dimension"),
        ("flatten", 64 * 14 * 14, "channels × height × width"),
        ("flatten_36", 3136, "36×36"),  # assumed the flatten size does not depend on the input
        ("conv1", None, "replace each None"),
        ("conv1", "32x28x28", "tuple of ints"),
    ],
)
def test_conv_shapes_wrong_answer_fails(
    stage: str, value: object, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = {**RIGHT_SHAPES, stage: value}
    with pytest.raises(AssertionError) as err:
        check_conv_shapes(answer)
    assert hint in str(err.value)
    assert capsys.readouterr().out.startswith("❌ Exercise 1.1:")


def test_conv_shapes_missing_key_fails() -> None:
    answer = dict(RIGHT_SHAPES)
    del answer["flatten_36"]
    with pytest.raises(AssertionError, match="missing entries: flatten_36"):
        check_conv_shapes(answer)


# --- 1.2: evaluate_accuracy ---------------------------------------------------------------------


def right_evaluate(model: nn.Module, loader) -> float:
    model.eval()
    correct, total = 0, 0
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    return correct / total


def train_mode(model: nn.Module, loader) -> float:
    correct, total = 0, 0
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    return correct / total


def with_gradients(model: nn.Module, loader) -> float:
    model.eval()
    correct, total = 0, 0
    for x, y in loader:
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    return correct / total


def calls_backward(model: nn.Module, loader) -> float:
    model.eval()
    correct, total = 0, 0
    for x, y in loader:
        logits = model(x)
        nn.functional.cross_entropy(logits, y).backward()
        with torch.no_grad():
            correct += (logits.argmax(1) == y).sum().item()
        total += len(y)
    return correct / total


def mean_of_batches(model: nn.Module, loader) -> float:
    model.eval()
    accs = []
    with torch.no_grad():
        for x, y in loader:
            accs.append((model(x).argmax(1) == y).float().mean().item())
    return sum(accs) / len(accs)


def divides_by_batches_times_size(model: nn.Module, loader) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x).argmax(1) == y).sum().item()
    return correct / (len(loader) * loader.batch_size)


def argmax_dim0(model: nn.Module, loader) -> float:
    model.eval()
    correct, total = 0, 0
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x).argmax(0) == y).sum().item()
            total += len(y)
    return correct / total


def returns_tensor(model: nn.Module, loader) -> float:
    model.eval()
    correct, total = torch.tensor(0), 0
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x).argmax(1) == y).sum()
            total += len(y)
    return correct / total  # type: ignore[return-value]


def percentage(model: nn.Module, loader) -> float:
    return 100 * right_evaluate(model, loader)


def skips_last_batch(model: nn.Module, loader) -> float:
    model.eval()
    correct, total = 0, 0
    with torch.no_grad():
        for x, y in loader:
            if len(y) < loader.batch_size:
                break
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    return correct / total


def test_evaluate_right_answer_passes(capsys: pytest.CaptureFixture[str]) -> None:
    check_evaluate_fn(right_evaluate)
    assert capsys.readouterr().out.startswith("✅ Exercise 1.2:")


def test_evaluate_inference_mode_and_len_dataset_pass() -> None:
    def inference(model: nn.Module, loader) -> float:
        model.eval()
        with torch.inference_mode():
            correct = sum((model(x).argmax(1) == y).sum().item() for x, y in loader)
        return correct / len(loader.dataset)

    check_evaluate_fn(inference)


@pytest.mark.parametrize(
    ("fn", "hint"),
    [
        (train_mode, "model.eval()"),
        (with_gradients, "torch.no_grad()"),
        (calls_backward, "torch.no_grad()"),
        (mean_of_batches, "averaged the per-batch accuracies"),
        (divides_by_batches_times_size, "not len(loader) * batch_size"),
        (argmax_dim0, "argmax(1)"),
        (returns_tensor, "not a float"),
        (percentage, "not a percentage"),
        (skips_last_batch, "including the last"),
    ],
    ids=lambda v: getattr(v, "__name__", "hint"),
)
def test_evaluate_wrong_answer_fails(fn, hint: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(AssertionError) as err:
        check_evaluate_fn(fn)
    assert hint in str(err.value)
    assert capsys.readouterr().out.startswith("❌ Exercise 1.2:")


def test_evaluate_passes_not_implemented_through() -> None:
    def blank(model: nn.Module, loader) -> float:
        raise NotImplementedError("Exercise 1.2: write the evaluation loop")

    with pytest.raises(NotImplementedError):
        check_evaluate_fn(blank)


# --- 1.3: a deeper CNN with a dynamic flatten -----------------------------------------------------


def conv_blocks(channels: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels, channels[1:], strict=False):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers)


class RightCNN(nn.Module):
    def __init__(self, input_size: int = 28, num_classes: int = 10) -> None:
        super().__init__()
        self.features = conv_blocks((1, 8, 16, 32))
        with torch.no_grad():
            n_flat = self.features(torch.zeros(1, 1, input_size, input_size)).numel()
        self.classifier = nn.Linear(n_flat, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class HardCodedFlatten(RightCNN):
    def __init__(self, input_size: int = 28, num_classes: int = 10) -> None:
        super().__init__(input_size, num_classes)
        self.classifier = nn.Linear(32 * 3 * 3, num_classes)  # right only for 28×28


class TwoConvs(RightCNN):
    def __init__(self, input_size: int = 28, num_classes: int = 10) -> None:
        super().__init__(input_size, num_classes)
        self.features = conv_blocks((1, 8, 32))
        with torch.no_grad():
            n_flat = self.features(torch.zeros(1, 1, input_size, input_size)).numel()
        self.classifier = nn.Linear(n_flat, num_classes)


class SkipsThirdConv(RightCNN):
    def __init__(self, input_size: int = 28, num_classes: int = 10) -> None:
        super().__init__(input_size, num_classes)
        self.features = conv_blocks((1, 8, 32))
        self.unused = nn.Conv2d(32, 32, 3, padding=1)
        with torch.no_grad():
            n_flat = self.features(torch.zeros(1, 1, input_size, input_size)).numel()
        self.classifier = nn.Linear(n_flat, num_classes)


class LosesBatchDim(RightCNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1)).mean(0)


class NoInputSize(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = RightCNN()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DetachedFeatures(RightCNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1).detach())


def test_dynamic_flatten_right_answer_passes(capsys: pytest.CaptureFixture[str]) -> None:
    check_dynamic_flatten(RightCNN)
    assert capsys.readouterr().out.startswith("✅ Exercise 1.3:")


@pytest.mark.parametrize(
    ("model_cls", "hint"),
    [
        (HardCodedFlatten, "dummy"),
        (TwoConvs, "2 Conv2d layers, not 3"),
        (SkipsThirdConv, "uses 2 of the 3"),
        (LosesBatchDim, "not (2, 10)"),
        (NoInputSize, "input_size"),
        (DetachedFeatures, "no gradient"),
    ],
    ids=lambda v: getattr(v, "__name__", "hint"),
)
def test_dynamic_flatten_wrong_answer_fails(
    model_cls: type[nn.Module], hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(AssertionError) as err:
        check_dynamic_flatten(model_cls)
    assert hint in str(err.value)
    assert capsys.readouterr().out.startswith("❌ Exercise 1.3:")


def test_dynamic_flatten_keeps_global_random_state() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_dynamic_flatten(RightCNN)
    assert torch.equal(torch.rand(3), expected)


# --- 1.4: per-class accuracy --------------------------------------------------------------------


def right_per_class(y_true, y_pred, num_classes: int = 10) -> np.ndarray:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    total = np.bincount(y_true, minlength=num_classes)
    correct = np.bincount(y_true[y_true == y_pred], minlength=num_classes)
    return np.divide(correct, total, out=np.full(num_classes, np.nan), where=total > 0)


def loop_with_mean(y_true, y_pred, num_classes: int = 10) -> np.ndarray:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return np.array([(y_pred[y_true == c] == c).mean() for c in range(num_classes)])


def precision_instead(y_true, y_pred, num_classes: int = 10) -> np.ndarray:
    return right_per_class(y_pred, y_true, num_classes)


def zero_for_absent(y_true, y_pred, num_classes: int = 10) -> np.ndarray:
    return np.nan_to_num(right_per_class(y_true, y_pred, num_classes))


def only_present_classes(y_true, y_pred, num_classes: int = 10) -> np.ndarray:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return np.array([(y_pred[y_true == c] == c).mean() for c in np.unique(y_true)])


def overall_accuracy(y_true, y_pred, num_classes: int = 10) -> np.ndarray:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return np.full(num_classes, (y_true == y_pred).mean())


def returns_list(y_true, y_pred, num_classes: int = 10) -> np.ndarray:
    return right_per_class(y_true, y_pred, num_classes).tolist()  # type: ignore[return-value]


def numpy_only(y_true, y_pred, num_classes: int = 10) -> np.ndarray:
    if isinstance(y_true, torch.Tensor):
        raise TypeError("expected numpy arrays")
    return right_per_class(y_true, y_pred, num_classes)


def test_per_class_right_answers_pass(capsys: pytest.CaptureFixture[str]) -> None:
    check_per_class_accuracy(right_per_class)
    check_per_class_accuracy(loop_with_mean)  # nan from the mean of an empty slice is right
    assert capsys.readouterr().out.startswith("✅ Exercise 1.4:")


@pytest.mark.parametrize(
    ("fn", "hint"),
    [
        (precision_instead, "precision"),
        (zero_for_absent, "return nan"),
        (only_present_classes, "one entry per class"),
        (overall_accuracy, "overall accuracy"),
        (returns_list, "not a NumPy array"),
        (numpy_only, "np.asarray"),
    ],
    ids=lambda v: getattr(v, "__name__", "hint"),
)
def test_per_class_wrong_answer_fails(fn, hint: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(AssertionError) as err:
        check_per_class_accuracy(fn)
    assert hint in str(err.value)
    assert capsys.readouterr().out.startswith("❌ Exercise 1.4:")
