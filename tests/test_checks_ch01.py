"""Chapter 1 ``check_*`` helpers: the right answer passes, each typical mistake fails."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from checks_support import fails, passes
from torch import nn

from course_utils import train
from course_utils.checks.ch01 import (
    check_conv_shapes,
    check_dynamic_flatten,
    check_per_class_accuracy,
)
from course_utils.checks.ch01_loops import check_loops
from course_utils.train import evaluate as package_evaluate
from course_utils.train import fit as package_fit

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


# --- 1.2: a deeper CNN with a dynamic flatten -----------------------------------------------------


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
    assert capsys.readouterr().out.startswith("✅ Exercise 1.2:")


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
    assert capsys.readouterr().out.startswith("❌ Exercise 1.2:")


def test_dynamic_flatten_keeps_global_random_state() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_dynamic_flatten(RightCNN)
    assert torch.equal(torch.rand(3), expected)


# --- 1.3: per-class accuracy --------------------------------------------------------------------


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
    assert capsys.readouterr().out.startswith("✅ Exercise 1.3:")


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
    assert capsys.readouterr().out.startswith("❌ Exercise 1.3:")


# --- 1.4: the training and evaluation loops -----------------------------------------------------


def right_train(model, batches, optimizer, loss_fn, n_steps):
    model.train()
    losses = []
    for x, y in itertools.islice(itertools.cycle(batches), n_steps):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def counter_train(model, batches, optimizer, loss_fn, n_steps):
    """The same loop written with an outer loop and a step counter."""
    model.train()
    losses, step = [], 0
    while step < n_steps:
        for x, y in batches:
            if step == n_steps:
                break
            optimizer.zero_grad(set_to_none=False)
            loss = loss_fn(model(x.to("cpu")), y)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
    return losses


def right_evaluate(model, batches, loss_fn):
    was_training = model.training
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    try:
        with torch.no_grad():
            for x, y in batches:
                logits = model(x)
                total_loss += loss_fn(logits, y).item() * len(y)
                correct += (logits.argmax(1) == y).sum().item()
                seen += len(y)
    finally:
        model.train(was_training)
    return total_loss / seen, correct / seen


def inference_evaluate(model, batches, loss_fn):
    """torch.inference_mode and a sum over a list: also right."""
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        pairs = [(model(x), y) for x, y in batches]
    model.train(was_training)
    n = sum(len(y) for _, y in pairs)
    loss = sum(loss_fn(lg, y).item() * len(y) for lg, y in pairs) / n
    return loss, sum((lg.argmax(1) == y).sum().item() for lg, y in pairs) / n


def no_train_mode(model, batches, optimizer, loss_fn, n_steps):
    losses = []
    for x, y in itertools.islice(itertools.cycle(batches), n_steps):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def no_zero_grad(model, batches, optimizer, loss_fn, n_steps):
    model.train()
    losses = []
    for x, y in itertools.islice(itertools.cycle(batches), n_steps):
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def one_pass_only(model, batches, optimizer, loss_fn, n_steps):
    return right_train(model, batches, optimizer, loss_fn, len(batches))


def step_before_backward(model, batches, optimizer, loss_fn, n_steps):
    model.train()
    losses = []
    for x, y in itertools.islice(itertools.cycle(batches), n_steps):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        optimizer.step()
        loss.backward()
        losses.append(loss.item())
    return losses


def keeps_tensors(model, batches, optimizer, loss_fn, n_steps):
    model.train()
    losses = []
    for x, y in itertools.islice(itertools.cycle(batches), n_steps):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss)
    return losses


def ends_in_eval(model, batches, optimizer, loss_fn, n_steps):
    losses = right_train(model, batches, optimizer, loss_fn, n_steps)
    model.eval()
    return losses


def chapter_evaluate(model, batches, loss_fn):
    """The chapter's evaluate: right numbers, but the model is left in eval mode."""
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    with torch.inference_mode():
        for x, y in batches:
            logits = model(x)
            total_loss += loss_fn(logits, y).item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
    return total_loss / seen, correct / seen


def eval_in_train_mode(model, batches, loss_fn):
    was_training = model.training
    model.train()
    with torch.no_grad():
        out = _sums(model, batches, loss_fn)[:2]
    model.train(was_training)
    return out


def _sums(model, batches, loss_fn):
    total_loss, correct, seen, per_batch = 0.0, 0, 0, []
    for x, y in batches:
        logits = model(x)
        loss = loss_fn(logits, y).item()
        hits = (logits.argmax(1) == y).sum().item()
        per_batch.append((loss, hits / len(y)))
        total_loss, correct, seen = total_loss + loss * len(y), correct + hits, seen + len(y)
    return total_loss / seen, correct / seen, per_batch


def eval_with_gradients(model, batches, loss_fn):
    was_training = model.training
    model.eval()
    out = _sums(model, batches, loss_fn)[:2]
    model.train(was_training)
    return out


def mean_of_batch_accuracies(model, batches, loss_fn):
    was_training = model.training
    model.eval()
    with torch.no_grad():
        loss, _, per_batch = _sums(model, batches, loss_fn)
    model.train(was_training)
    return loss, float(np.mean([a for _, a in per_batch]))


def mean_of_batch_losses(model, batches, loss_fn):
    was_training = model.training
    model.eval()
    with torch.no_grad():
        _, acc, per_batch = _sums(model, batches, loss_fn)
    model.train(was_training)
    return float(np.mean([v for v, _ in per_batch])), acc


def percentage_accuracy(model, batches, loss_fn):
    loss, acc = right_evaluate(model, batches, loss_fn)
    return loss, 100 * acc


def accuracy_only(model, batches, loss_fn):
    return right_evaluate(model, batches, loss_fn)[1]


def test_loops_right_answers_pass(capsys: pytest.CaptureFixture[str]) -> None:
    passes(lambda fns: check_loops(*fns), (right_train, right_evaluate), "1.4", capsys)
    passes(lambda fns: check_loops(*fns), (counter_train, inference_evaluate), "1.4", capsys)


@pytest.mark.parametrize(
    ("train_steps", "hint"),
    [
        (no_train_mode, "model.train()"),
        (no_zero_grad, "optimizer.zero_grad() before each backward()"),
        (one_pass_only, "run exactly n_steps optimizer steps"),
        (step_before_backward, "loss.backward() → optimizer.step()"),
        (keeps_tensors, "loss.item()"),
        (ends_in_eval, "leave it in train mode"),
    ],
    ids=lambda v: getattr(v, "__name__", "hint"),
)
def test_loops_wrong_training_loop_fails(train_steps, hint: str, capsys) -> None:
    fails(lambda fn: check_loops(fn, right_evaluate), train_steps, hint, "1.4", capsys)


@pytest.mark.parametrize(
    ("evaluate_model", "hint"),
    [
        (chapter_evaluate, "model.train(was_training)"),
        (eval_in_train_mode, "call model.eval() before the loop"),
        (eval_with_gradients, "torch.no_grad()"),
        (mean_of_batch_accuracies, "averaged the per-batch accuracies"),
        (mean_of_batch_losses, "weighs the short last batch"),
        (percentage_accuracy, "not a percentage"),
        (accuracy_only, "not (loss, accuracy)"),
    ],
    ids=lambda v: getattr(v, "__name__", "hint"),
)
def test_loops_wrong_evaluation_loop_fails(evaluate_model, hint: str, capsys) -> None:
    fails(lambda fn: check_loops(right_train, fn), evaluate_model, hint, "1.4", capsys)


def fit_shortcut(model, batches, optimizer, loss_fn, n_steps):
    """Passes on the numbers: the package's fit over the cycled batches."""
    steps = list(itertools.islice(itertools.cycle(batches), n_steps))
    history = train.fit(model, steps, None, 1, optimizer, loss_fn=loss_fn, progress=False)
    return history.step_loss


def fit_alias_shortcut(model, batches, optimizer, loss_fn, n_steps):
    """The same through a name imported into the learner's module."""
    steps = list(itertools.islice(itertools.cycle(batches), n_steps))
    return package_fit(model, steps, None, 1, optimizer, loss_fn=loss_fn, progress=False).step_loss


def evaluate_shortcut(model, batches, loss_fn):
    return train.evaluate(model, batches, loss_fn)


def evaluate_alias_shortcut(model, batches, loss_fn):
    return package_evaluate(model, batches, loss_fn)


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ((fit_shortcut, right_evaluate), "course_utils.train.fit"),
        ((fit_alias_shortcut, right_evaluate), "package_fit"),
        ((right_train, evaluate_shortcut), "course_utils.train.evaluate"),
        ((right_train, evaluate_alias_shortcut), "package_evaluate"),
    ],
    ids=["fit", "fit-imported-as-alias", "evaluate", "evaluate-imported-as-alias"],
)
def test_loops_package_shortcut_refused(answer, label: str, capsys) -> None:
    fit, evaluate = train.fit, train.evaluate
    message = fails(lambda fns: check_loops(*fns), answer, "write the", "1.4", capsys)
    assert label in message, message
    assert train.fit is fit and train.evaluate is evaluate  # restored afterwards
    assert package_fit is fit and package_evaluate is evaluate


def test_loops_pass_not_implemented_through() -> None:
    def blank(*_args):
        raise NotImplementedError("Exercise 1.4: write the training loop")

    with pytest.raises(NotImplementedError):
        check_loops(blank, right_evaluate)
