"""Chapter 2 ``check_*`` helpers: the right answer passes, each typical mistake fails."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from checks_support import fails, passes
from torch import nn

from course_utils.checks import ch02
from course_utils.checks.ch02 import (
    TASK_LR,
    VERDICTS,
    check_batchnorm_fn,
    check_batchnorm_placement,
    check_lr_experiment,
)
from course_utils.data import FashionMNISTTensors, TensorLoader
from course_utils.experiments import compare
from course_utils.models import FashionCNN
from course_utils.train import evaluate, fit, seed_everything

imported_batch_norm = F.batch_norm  # as `from torch.nn.functional import batch_norm` would


def make_cnn(
    order: str = "conv-bn-relu",
    bn2_features: int = 64,
    use_bn2: bool = True,
    typed_flatten: bool = False,
):
    class CNN(nn.Module):
        def __init__(self, input_size: int = 28) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(32)
            self.conv2 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(bn2_features)
            self.pool = nn.MaxPool2d(2)
            side = 7 if typed_flatten else input_size // 4
            self.fc = nn.Linear(64 * side * side, 10)

        def block(self, conv: nn.Module, bn: nn.Module, x: torch.Tensor, use: bool = True):
            if not use:
                return self.pool(F.relu(conv(x)))
            if order == "conv-relu-bn":
                return self.pool(bn(F.relu(conv(x))))
            return self.pool(F.relu(bn(conv(x))))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.block(self.conv1, self.bn1, x)
            x = self.block(self.conv2, self.bn2, x, use_bn2)
            return self.fc(torch.flatten(x, 1))

    return CNN


class SequentialBN(nn.Module):
    """The same idea written with nn.Sequential and a ReLU module."""

    def __init__(self, input_size: int = 28) -> None:
        super().__init__()
        side = input_size // 4
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * side * side, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class NoInputSize(nn.Module):
    """Right at 28×28, but its constructor takes no input size."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = SequentialBN()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def test_batchnorm_placement_right_answers_pass(capsys) -> None:
    passes(check_batchnorm_placement, make_cnn(), "2.1", capsys)
    passes(check_batchnorm_placement, SequentialBN, "2.1", capsys)


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (make_cnn(order="conv-relu-bn"), "conv → BatchNorm2d → ReLU"),
        (make_cnn(bn2_features=32), "num_features"),
        (make_cnn(use_bn2=False), "does not go to a BatchNorm2d"),
        (make_cnn(typed_flatten=True), "instead of typing 64 * 7 * 7"),
        (NoInputSize, "give __init__ an `input_size: int = 28` argument"),
    ],
    ids=["bn-after-relu", "wrong-num-features", "second-bn-unused", "typed-flatten", "no-size"],
)
def test_batchnorm_placement_wrong_answers_fail(answer, hint: str, capsys) -> None:
    fails(check_batchnorm_placement, answer, hint, "2.1", capsys)


class WrongInChannels(nn.Module):
    """conv2 takes 16 channels where conv1 gives 32: the error names a *weight* size, which the
    check used to answer with "num_features must equal…"."""

    def __init__(self, input_size: int = 28) -> None:
        super().__init__()
        side = input_size // 4
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * side * side, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_batchnorm_placement_wrong_in_channels_is_named(capsys) -> None:
    message = fails(check_batchnorm_placement, WrongInChannels, "in_channels", "2.1", capsys)
    assert "num_features" not in message.split("Hint:")[1]


class Only28(SequentialBN):
    """Refuses other sizes with a ValueError, which used to escape the check raw."""

    def __init__(self, input_size: int = 28) -> None:
        if input_size != 28:
            raise ValueError("only 28×28 images")
        super().__init__(input_size)


def test_batchnorm_placement_size_error_fails_with_a_hint(capsys) -> None:
    fails(check_batchnorm_placement, Only28, "any input size of at least 28", "2.1", capsys)


def test_batchnorm_placement_batchnorm1d_fails(capsys) -> None:
    class OneD(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
            self.bn = nn.BatchNorm1d(4)
            self.fc = nn.Linear(4 * 28 * 28, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(self.conv2(self.conv(x)), 1))

    fails(check_batchnorm_placement, OneD, "no nn.BatchNorm2d", "2.1", capsys)


# --- 2.2: BatchNorm2d's forward in both modes ---------------------------------------------------

SHAPE = (1, -1, 1, 1)


def right_bn(x, gamma, beta, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    if training:
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        n = x.numel() / x.shape[1]
        new_mean = (1 - momentum) * running_mean + momentum * mean
        new_var = (1 - momentum) * running_var + momentum * var * n / (n - 1)
    else:
        mean, var, new_mean, new_var = running_mean, running_var, running_mean, running_var
    x_hat = (x - mean.view(SHAPE)) / torch.sqrt(var.view(SHAPE) + eps)
    return gamma.view(SHAPE) * x_hat + beta.view(SHAPE), new_mean, new_var


def var_mean_bn(x, gamma, beta, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    """torch.var_mean and torch.lerp: plain tensor operations, also right."""
    if not training:
        x_hat = (x - running_mean[:, None, None]) * torch.rsqrt(running_var[:, None, None] + eps)
        return gamma[:, None, None] * x_hat + beta[:, None, None], running_mean, running_var
    var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
    n = x.numel() // x.shape[1]
    y = gamma[:, None, None] * (x - mean[:, None, None]) * torch.rsqrt(var[:, None, None] + eps)
    new_mean = torch.lerp(running_mean, mean, momentum)
    return y + beta[:, None, None], new_mean, torch.lerp(running_var, var * n / (n - 1), momentum)


def unbiased_normalise(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    _, m, v = right_bn(x, gamma, beta, rm, rv, training, momentum, eps)
    mean, var = x.mean(dim=(0, 2, 3), keepdim=True), x.var(dim=(0, 2, 3), keepdim=True)
    return gamma.view(SHAPE) * (x - mean) / torch.sqrt(var + eps) + beta.view(SHAPE), m, v


def biased_running_var(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    y, m, _ = right_bn(x, gamma, beta, rm, rv, training, momentum, eps)
    return y, m, (1 - momentum) * rv + momentum * x.var(dim=(0, 2, 3), unbiased=False)


def momentum_reversed(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    y, _, v = right_bn(x, gamma, beta, rm, rv, training, momentum, eps)
    return y, momentum * rm + (1 - momentum) * x.mean(dim=(0, 2, 3)), v


def per_image(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    _, m, v = right_bn(x, gamma, beta, rm, rv, training, momentum, eps)
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), keepdim=True, unbiased=False)
    return gamma.view(SHAPE) * (x - mean) / torch.sqrt(var + eps) + beta.view(SHAPE), m, v


def no_affine(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    _, m, v = right_bn(x, gamma, beta, rm, rv, training, momentum, eps)
    ones, zeros = torch.ones_like(gamma), torch.zeros_like(beta)
    return right_bn(x, ones, zeros, rm, rv, training, momentum, eps)[0], m, v


def batch_stats_in_eval(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    y, m, v = right_bn(x, gamma, beta, rm, rv, True, momentum, eps)
    return (y, m, v) if training else (y, rm, rv)


def updates_in_eval(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    y = right_bn(x, gamma, beta, rm, rv, training, momentum, eps)[0]
    return (y, *right_bn(x, gamma, beta, rm, rv, True, momentum, eps)[1:])


def in_place_update(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    y, m, v = right_bn(x, gamma, beta, rm, rv, training, momentum, eps)
    rm.copy_(m)
    rv.copy_(v)
    return y, rm, rv


def fixed_momentum(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    return right_bn(x, gamma, beta, rm, rv, training, 0.1, eps)


def test_batchnorm_fn_right_answers_pass(capsys) -> None:
    passes(check_batchnorm_fn, right_bn, "2.2", capsys)
    passes(check_batchnorm_fn, var_mean_bn, "2.2", capsys)


@pytest.mark.parametrize(
    ("fn", "hint"),
    [
        (unbiased_normalise, "biased variance"),
        (biased_running_var, "*unbiased* batch variance"),
        (momentum_reversed, "momentum weighs the batch"),
        (per_image, "per channel, over the batch"),
        (no_affine, "gamma * x_hat + beta"),
        (batch_stats_in_eval, "in eval mode normalise with running_mean"),
        (updates_in_eval, "in eval mode the running statistics stay as they are"),
        (in_place_update, "changed its argument(s) running_mean, running_var in place"),
        (fixed_momentum, "(1 - momentum) * old + momentum"),
        (lambda x, g, b, m, v, *a: (x, m, v), "per channel"),
        (lambda x, g, b, m, v, *a: x, "three tensors"),
    ],
    ids=[
        "unbiased-normalise",
        "biased-running-var",
        "momentum-reversed",
        "per-image",
        "no-affine",
        "batch-stats-in-eval",
        "updates-in-eval",
        "in-place",
        "fixed-momentum",
        "identity",
        "one-output",
    ],
)
def test_batchnorm_fn_wrong_answers_fail(fn, hint: str, capsys) -> None:
    fails(check_batchnorm_fn, fn, hint, "2.2", capsys)


def running_unchanged(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    return right_bn(x, gamma, beta, rm, rv, training, momentum, eps)[0], rm.clone(), rv.clone()


def running_is_batch(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    y, m, v = right_bn(x, gamma, beta, rm, rv, training, momentum, eps)
    return (y, x.mean(dim=(0, 2, 3)), v) if training else (y, m, v)


def none_in_eval(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    """None for the running statistics in eval mode: used to crash torch.as_tensor raw."""
    y, m, v = right_bn(x, gamma, beta, rm, rv, training, momentum, eps)
    return (y, m, v) if training else (y, None, None)


def fixed_eps(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    return right_bn(x, gamma, beta, rm, rv, training, momentum, 1e-5)


@pytest.mark.parametrize(
    ("fn", "hint"),
    [
        (fixed_momentum, "use the `momentum` argument (here 0.3), not a fixed 0.1"),
        (running_unchanged, "you returned it unchanged"),
        (running_is_batch, "you returned the batch's value"),
        (fixed_eps, "use the `eps` argument (here 0.001)"),
        (none_in_eval, "three tensors, in both modes"),
    ],
    ids=["fixed-momentum", "running-unchanged", "running-is-batch", "fixed-eps", "none-in-eval"],
)
def test_batchnorm_fn_hint_names_the_mistake(fn, hint: str, capsys) -> None:
    """These were told the general formula; the hint now names the argument or step missed."""
    fails(check_batchnorm_fn, fn, hint, "2.2", capsys)


def functional_shortcut(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    rm, rv = rm.clone(), rv.clone()
    y = F.batch_norm(x, rm, rv, gamma, beta, training=training, momentum=momentum, eps=eps)
    return y, rm, rv


def module_shortcut(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    layer = nn.BatchNorm2d(x.shape[1], eps=eps, momentum=momentum)
    with torch.no_grad():
        layer.weight.copy_(gamma)
        layer.bias.copy_(beta)
        layer.running_mean.copy_(rm)
        layer.running_var.copy_(rv)
        y = layer.train(training)(x)
    return y, layer.running_mean.clone(), layer.running_var.clone()


def torch_shortcut(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    rm, rv = rm.clone(), rv.clone()
    return torch.batch_norm(x, gamma, beta, rm, rv, training, momentum, eps, False), rm, rv


def instance_norm_shortcut(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    """Instance norm of the batch seen as one image: batch norm's output, through another door."""
    if not training:
        return right_bn(x, gamma, beta, rm, rv, training, momentum, eps)
    whole = x.transpose(0, 1).reshape(1, x.shape[1], -1)
    y = F.instance_norm(whole, weight=gamma, bias=beta, eps=eps)
    y = y.reshape(x.shape[1], x.shape[0], *x.shape[2:]).transpose(0, 1)
    return y, *right_bn(x, gamma, beta, rm, rv, training, momentum, eps)[1:]


def alias_shortcut(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    rm, rv = rm.clone(), rv.clone()
    return imported_batch_norm(x, rm, rv, gamma, beta, training, momentum, eps), rm, rv


@pytest.mark.parametrize(
    ("fn", "label"),
    [
        (functional_shortcut, "torch.nn.functional.batch_norm"),
        (module_shortcut, "torch.nn.BatchNorm2d"),
        (torch_shortcut, "torch.batch_norm"),
        (instance_norm_shortcut, "torch.nn.functional.instance_norm"),
        (alias_shortcut, "imported_batch_norm"),
    ],
    ids=["F.batch_norm", "nn.BatchNorm2d", "torch.batch_norm", "F.instance_norm", "alias"],
)
def test_batchnorm_fn_library_shortcut_refused(fn, label: str, capsys) -> None:
    originals = (F.batch_norm, nn.BatchNorm2d, torch.batch_norm, F.instance_norm)
    message = fails(
        check_batchnorm_fn, fn, "write BatchNorm's forward pass yourself", "2.2", capsys
    )
    assert label in message, message
    assert (F.batch_norm, nn.BatchNorm2d, torch.batch_norm, F.instance_norm) == originals
    assert imported_batch_norm is F.batch_norm  # the alias is restored too


def test_batchnorm_fn_passes_not_implemented_through() -> None:
    def blank(*_args):
        raise NotImplementedError("Exercise 2.2: write BatchNorm")

    with pytest.raises(NotImplementedError):
        check_batchnorm_fn(blank)


# --- 2.3: the experiment ------------------------------------------------------------------------

CLEAR = {"batch": {0: 0.80, 1: 0.81}, "none": {0: 0.60, 1: 0.62}}  # BatchNorm helps, beyond noise
NOISY = {"batch": {0: 0.80, 1: 0.70}, "none": {0: 0.75, 1: 0.72}}  # within noise


def tiny_split(n: int, seed: int) -> FashionMNISTTensors:
    """``n`` images that can be learnt: a class's prototype half-blended with noise, so that
    runs differ in accuracy from arm to arm and seed to seed."""
    prototypes = torch.rand(10, 28, 28, generator=torch.Generator().manual_seed(99))
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = (0.5 * prototypes[labels] + 0.5 * torch.rand(n, 28, 28, generator=g)) * 255
    return FashionMNISTTensors(images.to(torch.uint8), labels)


TRAIN, VAL = tiny_split(128, 0), tiny_split(64, 1)  # 2 batches of 64: one epoch is 2 steps


def test_the_tiny_task_tells_runs_apart() -> None:
    """Every run of the honest report differs from the others: a fixture where all runs score
    the same could not tell a constant from real runs."""
    values = [v for runs in HONEST.values() for v in runs.values()]
    assert len(set(values)) == len(values), HONEST


@pytest.fixture
def task(monkeypatch) -> None:
    """The check's own copy of the task's data, tiny: runs take a fraction of a second."""
    monkeypatch.setattr(ch02, "_task_data", lambda: (TRAIN, VAL), raising=False)


def make_run(
    lr: float = TASK_LR,
    optimizer: type[torch.optim.Optimizer] = torch.optim.Adam,
    train: FashionMNISTTensors = TRAIN,
    bn_arm: str = "batch",
    steps: int | None = None,
    returns: float | None = None,
):
    """The learner's run(norm, seed): the task's protocol, or one setting changed."""

    def run(norm: str, seed: int) -> float:
        seed_everything(seed)
        model = FashionCNN(norm="batch" if norm == bn_arm else "none")
        opt = optimizer(model.parameters(), lr=lr)
        batches = TensorLoader(train, 64, shuffle=True, seed=seed)
        if steps is None:
            fit(model, batches, None, 1, opt, progress=False)
        else:
            for (x, y), _ in zip(batches, range(steps), strict=False):
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
        if returns is not None:
            return returns
        return evaluate(model, TensorLoader(VAL, 500))[1]

    return run


def report(run) -> dict[str, dict[int, float]]:
    return {arm: {seed: run(arm, seed) for seed in (0, 1)} for arm in ("batch", "none")}


def noise_rule(reported) -> str:
    runs = pd.DataFrame(
        {"variant": a, "seed": s, "v": v} for a, r in reported.items() for s, v in r.items()
    )
    c = compare(runs, "batch", "none", "v")
    return (VERDICTS[0] if c.diff > 0 else VERDICTS[1]) if c.beyond_noise else VERDICTS[2]


HONEST = report(make_run())


def experiment(run, reported, verdict, lr: float = TASK_LR) -> None:
    check_lr_experiment(run, reported, verdict, lr=lr)


def test_lr_experiment_right_answer_passes(task, capsys) -> None:
    answer = (make_run(), HONEST, noise_rule(HONEST))
    passes(lambda a: experiment(*a), answer, "2.3", capsys)


def test_lr_experiment_one_step_and_a_constant_fails(task, capsys) -> None:
    """The hole of issue 20: one optimiser step, then a constant for every run, reported as
    such with the verdict "within seed noise". Today's check reran run, saw it step at the
    learner's own lr with BatchNorm in the 'batch' arm and return the same constant: ✅."""
    run = make_run(steps=1, returns=0.5)
    constant = {"batch": {0: 0.5, 1: 0.5}, "none": {0: 0.5, 1: 0.5}}
    message = fails(
        lambda a: experiment(*a),
        (run, constant, VERDICTS[2]),
        "one epoch on exp_train",
        "2.3",
        capsys,
    )
    assert "took 1 optimiser step(s)" in message


def test_lr_experiment_a_full_epoch_then_a_constant_fails(task, capsys) -> None:
    """The same, with a whole epoch of training: the check's own rerun of each run by the
    task's protocol does not give the constant."""
    run = make_run(returns=0.5)
    constant = {"batch": {0: 0.5, 1: 0.5}, "none": {0: 0.5, 1: 0.5}}
    message = fails(
        lambda a: experiment(*a), (run, constant, VERDICTS[2]), "the check measured", "2.3", capsys
    )
    assert "a rerun gave" in message


def test_lr_experiment_edited_high_lr_fails(task, capsys) -> None:
    """HIGH_LR set back to 1e-3, and everything consistent with it: the rate is the task's."""
    run = make_run(lr=1e-3)
    reported = report(run)
    answer = (run, reported, noise_rule(reported), 1e-3)
    fails(lambda a: experiment(*a), answer, "10 * 1e-3", "2.3", capsys)


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        ((make_run(), NOISY, VERDICTS[0]), "within noise"),
        ((make_run(), CLEAR, VERDICTS[2]), "is beyond seed noise"),
        ((make_run(), CLEAR, VERDICTS[1]), "in the other direction"),
        ((make_run(), CLEAR, "BN is better"), "one of the three strings"),
        ((make_run(), {"batch": {0: 0.80}, "none": {0: 0.60}}, VERDICTS[0]), "one seed says"),
        (
            (make_run(), {"batch": {0: 80.0, 1: 81.0}, "none": {0: 60.0, 1: 62.0}}, VERDICTS[0]),
            "not a percentage",
        ),
        (
            (make_run(), {"batch": {"0": 0.8, "1": 0.81}, "none": {"0": 0.6, "1": 0.62}}, "x"),
            "is not an int",
        ),
    ],
    ids=[
        "noise-called-a-win",
        "real-difference-called-noise",
        "real-difference-the-other-way",
        "free-text-verdict",
        "one-seed",
        "percentages",
        "string-seeds",
    ],
)
def test_lr_experiment_wrong_reports_fail(task, answer, hint: str, capsys) -> None:
    fails(lambda a: experiment(*a), answer, hint, "2.3", capsys)


def typed(reported, delta: float = 0.05):
    return {
        a: {s: v + (delta if (a, s) == ("none", 1) else 0.0) for s, v in r.items()}
        for a, r in reported.items()
    }


def swapped(reported):
    return {"batch": reported["none"], "none": reported["batch"]}


def unseeded_run(arm: str, seed: int) -> float:
    return make_run()(arm, seed) + float(torch.rand(()).item()) * 0.01 * (seed + 1)


@pytest.mark.parametrize(
    ("run", "make_report", "hint"),
    [
        (make_run(), typed, "report the numbers of your runs"),
        (unseeded_run, lambda r: r, "report the numbers of your runs"),
        (make_run(lr=1e-3), lambda r: r, "10× larger learning rate"),
        (make_run(optimizer=torch.optim.SGD), lambda r: r, "not Adam"),
        (make_run(bn_arm="no such arm"), lambda r: r, "'batch' has BatchNorm"),
        (make_run(train=tiny_split(192, 2)), lambda r: r, "one epoch on exp_train"),
        (make_run(), swapped, "store each accuracy under the arm and seed of its own run"),
    ],
    ids=[
        "one-number-typed",
        "unseeded-run",
        "base-learning-rate",
        "sgd",
        "no-batchnorm-in-run",
        "other-training-data",
        "swapped-arms",
    ],
)
def test_lr_experiment_wrong_runs_fail(task, run, make_report, hint: str, capsys) -> None:
    reported = make_report(report(run))
    fails(lambda a: experiment(*a), (run, reported, noise_rule(reported)), hint, "2.3", capsys)


def test_lr_experiment_run_that_crashes_fails_with_a_hint(task, capsys) -> None:
    def run(arm: str, seed: int) -> float:
        raise ValueError("optimizer got an empty parameter list")

    fails(
        lambda a: experiment(*a),
        (run, HONEST, noise_rule(HONEST)),
        "run(norm, seed)",
        "2.3",
        capsys,
    )
