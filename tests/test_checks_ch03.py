"""Chapter 3 ``check_*`` helpers: the right answer passes, each typical mistake fails, and the
course's own counters are refused in the write-it-yourself task."""

from __future__ import annotations

import checks_support
import pytest
import torch
from checks_support import fails, passes

import course_utils.diagnostics
import course_utils.hooks
from course_utils.checks import ch03
from course_utils.checks._common import ShortcutRefused
from course_utils.checks.ch03 import (
    TASK_LR,
    _rerun_shares,
    check_count_dead,
    check_epochs_to_reach,
    check_silent_experiment,
    check_silent_per_layer,
)
from course_utils.data import FashionMNISTTensors, TensorLoader


def right_count(acts: torch.Tensor) -> int:
    return int((acts.transpose(0, 1).flatten(1).amax(1) == 0).sum())


def test_count_dead_right_answer_passes(capsys) -> None:
    passes(check_count_dead, right_count, "3.1", capsys)


@pytest.mark.parametrize(
    ("fn", "hint"),
    [
        (lambda a: int((a == 0).sum()), "not zero elements"),
        (
            lambda a: (
                int((a.flatten(2).amax(-1) == 0).any(0).sum())
                if a.dim() == 4
                else int((a == 0).any(0).sum())
            ),
            "*every* image",
        ),
        (lambda a: int((a.flatten(1).amax(1) == 0).sum()), "dim 1"),
        (lambda a: torch.tensor([1.0, 2.0]), "not an int"),
        (lambda a: float(right_count(a)), "not an int"),
    ],
    ids=["elements", "some-image", "per-image-units", "tensor", "float"],
)
def test_count_dead_wrong_answers_fail(fn, hint: str, capsys) -> None:
    fails(check_count_dead, fn, hint, "3.1", capsys)


def right_epochs_to(accs, target):
    return next((i for i, a in enumerate(accs, start=1) if a >= target), None)


def test_epochs_to_reach_right_answer_passes(capsys) -> None:
    passes(check_epochs_to_reach, right_epochs_to, "3.2", capsys)


@pytest.mark.parametrize(
    ("fn", "hint"),
    [
        (lambda a, t: next((i for i, v in enumerate(a) if v >= t), None), "counted from 1"),
        (lambda a, t: next((i for i, v in enumerate(a, 1) if v > t), None), "use >="),
        (
            lambda a, t: max(range(1, len(a) + 1), key=lambda i: a[i - 1]) if max(a) >= t else None,
            "*first* epoch",
        ),
        (lambda a, t: next((i for i, v in enumerate(a, 1) if v >= t), -1), "return None"),
    ],
    ids=["zero-based", "strict", "best", "minus-one"],
)
def test_epochs_to_reach_wrong_answers_fail(fn, hint: str, capsys) -> None:
    fails(check_epochs_to_reach, fn, hint, "3.2", capsys)


def test_epochs_to_reach_returning_a_tensor_fails_without_crashing(capsys) -> None:
    """A boolean tensor (one per epoch) used to crash the check with RuntimeError."""
    fn = lambda a, t: torch.tensor(a) >= t  # noqa: E731
    fails(check_epochs_to_reach, fn, "not an int or None", "3.2", capsys)


def test_epochs_to_reach_none_for_a_reached_target_is_named(capsys) -> None:
    """Only an exact hit counts (`==`): None where epoch 2 reaches the target. The hint was
    "the first epoch, not the best one"; it now says which epoch reaches it."""
    fn = lambda a, t: a.index(t) + 1 if t in a else None  # noqa: E731
    fails(check_epochs_to_reach, fn, "epoch 2 reaches the target (0.86 >= 0.85)", "3.2", capsys)


# --- 3.3 ---------------------------------------------------------------------------------------


def counter(
    *,
    restore=True,
    finally_=True,
    eval_=True,
    batches_used=None,
    on_output=False,
    remove=True,
    named=True,
):
    """A silent-unit counter with one mistake switched on by its keyword arguments."""

    def silent_per_layer(model, batches, kind):
        largest = {}

        def make_hook(name):
            def hook(_module, inputs, output):
                t = output.ne(0).float() if on_output else inputs[0]
                m = t.detach().transpose(0, 1).flatten(1).amax(1)
                largest[name] = torch.maximum(largest[name], m) if name in largest else m

            return hook

        modules = model.named_modules() if named else model.named_children()
        handles = [m.register_forward_hook(make_hook(n)) for n, m in modules if isinstance(m, kind)]
        was_training = model.training
        batches = list(batches)
        if batches_used is not None:
            batches = batches[batches_used]

        def run():
            if eval_:
                model.eval()
            with torch.no_grad():
                for x, _ in batches:
                    model(x)

        def clean():
            if remove:
                for h in handles:
                    h.remove()
            if restore:
                model.train(was_training)

        if finally_:
            try:
                run()
            finally:
                clean()
        else:
            run()
            clean()
        return {n: (int((m <= 0).sum()), len(m)) for n, m in largest.items()}

    return silent_per_layer


def test_silent_per_layer_right_answer_passes(capsys) -> None:
    passes(check_silent_per_layer, counter(), "3.3", capsys)


@pytest.mark.parametrize(
    ("fn", "hint"),
    [
        (counter(remove=False), "handle.remove()"),
        (counter(finally_=False), "`finally:` block"),
        (counter(restore=False), "model.train(was_training)"),
        (counter(eval_=False), "eval mode"),
        (counter(batches_used=slice(0, 1)), "combine all the batches"),
        (counter(batches_used=slice(-1, None)), "combine all the batches"),
        (counter(on_output=True), "*input*"),
        (counter(named=False), "named_modules()"),
        (lambda m, b, k: [1, 2], "not a dict"),
    ],
    ids=[
        "leaves-hooks",
        "no-finally",
        "mode-not-restored",
        "train-mode",
        "first-batch-only",
        "last-batch-only",
        "counts-output-zeros",
        "top-level-names-only",
        "not-a-dict",
    ],
)
def test_silent_per_layer_wrong_answers_fail(fn, hint: str, capsys) -> None:
    fails(check_silent_per_layer, fn, hint, "3.3", capsys)


def strict_counter(model, batches, kind):
    """Counts a unit as silent when its input is < 0: one whose input is exactly 0 is missed."""
    counts = counter()(model, batches, kind)
    largest = {}

    def make_hook(name):
        def hook(_module, inputs, _output):
            m = inputs[0].detach().transpose(0, 1).flatten(1).amax(1)
            largest[name] = torch.maximum(largest[name], m) if name in largest else m

        return hook

    handles = [
        m.register_forward_hook(make_hook(n))
        for n, m in model.named_modules()
        if isinstance(m, kind)
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for x, _ in batches:
                model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    assert set(counts) == set(largest)
    return {n: (int((m < 0).sum()), len(m)) for n, m in largest.items()}


def keyed_by_module(model, batches, kind):
    named = dict(model.named_modules())
    return {named[n]: pair for n, pair in counter()(model, batches, kind).items()}


def masks_not_counts(model, batches, kind):
    return {
        n: (torch.ones(units), units) for n, (_, units) in counter()(model, batches, kind).items()
    }


@pytest.mark.parametrize(
    ("fn", "hint"),
    [
        (strict_counter, "not < 0"),
        (keyed_by_module, "named_modules()"),
        (masks_not_counts, "is not a pair of ints"),
    ],
    ids=["input-below-zero-only", "keyed-by-module-crashed", "tensor-in-pair-crashed"],
)
def test_silent_per_layer_more_wrong_answers_fail(fn, hint: str, capsys) -> None:
    """The fixture had no unit whose input is exactly 0 (so `< 0` passed), and two malformed
    answers crashed the check with a raw TypeError/RuntimeError."""
    fails(check_silent_per_layer, fn, hint, "3.3", capsys)


def via_dead_units(model, batches, kind):
    table = course_utils.diagnostics.dead_units(model, list(batches))
    return {n: (int(r["silent"]), int(r["units"])) for n, r in table.iterrows()}


def via_capture(model, batches, kind):
    names = [n for n, m in model.named_modules() if isinstance(m, kind)]
    with course_utils.hooks.capture_activations(model, names, inputs=True) as pre:
        for x, _ in batches:
            model(x)
    return {n: (0, 0) for n in pre}


from course_utils.diagnostics import silent_units as imported_silent_units  # noqa: E402


def via_imported_name(model, batches, kind):
    imported_silent_units(torch.zeros(2, 3))
    return counter()(model, batches, kind)


@pytest.mark.parametrize(
    ("fn", "label"),
    [
        (via_dead_units, "dead_units"),
        (via_capture, "capture_activations"),
        (via_imported_name, "imported_silent_units"),
    ],
    ids=["diagnostics.dead_units", "hooks.capture_activations", "imported-alias"],
)
def test_silent_per_layer_refuses_the_course_counters(fn, label: str, capsys) -> None:
    originals = (
        course_utils.diagnostics.dead_units,
        course_utils.hooks.capture_activations,
        course_utils.diagnostics.capture_activations,
        imported_silent_units,
    )
    with pytest.raises(ShortcutRefused, match=label):
        check_silent_per_layer(fn)
    assert "❌ Exercise 3.3:" in capsys.readouterr().out
    assert (
        course_utils.diagnostics.dead_units,
        course_utils.hooks.capture_activations,
        course_utils.diagnostics.capture_activations,
        globals()["imported_silent_units"],
    ) == originals


# --- 3.4 ---------------------------------------------------------------------------------------


def tiny_split(n: int, seed: int) -> FashionMNISTTensors:
    """``n`` learnable images: a class's prototype half-blended with noise."""
    prototypes = torch.rand(10, 28, 28, generator=torch.Generator().manual_seed(99))
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = (0.5 * prototypes[labels] + 0.5 * torch.rand(n, 28, 28, generator=g)) * 255
    return FashionMNISTTensors(images.to(torch.uint8), labels)


def two_batches() -> FashionMNISTTensors:
    """A val_loader of 2 batches, 500 dim images then 100 bright ones, so that counting on one
    batch only gives another share than counting on both."""
    dim, bright = tiny_split(500, 1), tiny_split(100, 2)
    images = torch.cat([(dim.images.float() * 0.2).to(torch.uint8), bright.images])
    return FashionMNISTTensors(images, torch.cat([dim.labels, bright.labels]))


TRAIN, VAL = tiny_split(256, 0), two_batches()
PROBE = TensorLoader(VAL, 500)


@pytest.fixture(scope="module")
def runs() -> dict[tuple[str, int], dict[str, float]]:
    """Every run of the tiny task, with the shares of each recognised counting mistake."""
    return {
        (a, s): _rerun_shares(a, s, TRAIN, PROBE, TASK_LR, "cpu")
        for a in ("relu", "leaky_relu")
        for s in (0, 1)
    }


@pytest.fixture
def task(monkeypatch) -> None:
    """The check's own copy of the task's data, tiny."""
    monkeypatch.setattr(ch03, "_task_data", lambda: (TRAIN, VAL), raising=False)


def shares_by(runs, key: str = "task") -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for (a, s), values in runs.items():
        out.setdefault(a, {})[s] = values[key]
    return out


def honest_verdict(shares) -> str:
    verdicts = ("more in ReLU", "more in LeakyReLU", "within noise")
    return checks_support.honest_verdict(shares, "relu", "leaky_relu", verdicts)


def run_experiment_check(shares, verdict, *, train=TRAIN, probe=PROBE, lr=TASK_LR):
    check_silent_experiment(shares, verdict, train, probe, lr)


@pytest.mark.slow
def test_the_tiny_task_tells_runs_and_mistakes_apart(runs) -> None:
    """Each run's share differs from the others', and each recognised mistake gives another
    share than the task's rule in at least one run: else the check could not tell them apart."""
    shares = [r["task"] for r in runs.values()]
    assert len(set(shares)) == len(shares), runs
    for mistake in ("output", "first batch", "last batch", "layer mean"):
        assert any(abs(r[mistake] - r["task"]) > 0.02 for r in runs.values()), mistake


@pytest.mark.slow
def test_silent_experiment_honest_report_passes(task, runs, capsys) -> None:
    shares = shares_by(runs)
    passes(lambda v: run_experiment_check(shares, v), honest_verdict(shares), "3.4", capsys)


@pytest.mark.slow
def test_silent_experiment_right_for_the_picked_run_only_fails(task, runs, capsys) -> None:
    """The hole of issue 20: the check retrained the run picked by the sum of the reported
    shares, so a report right for that run and wrong for the three others passed. Now every
    run is retrained."""
    fake = checks_support.right_for_one_run_only(shares_by(runs), ("relu", 1))
    message = fails(
        lambda v: run_experiment_check(fake, v), honest_verdict(fake), "a rerun gave", "3.4", capsys
    )
    assert "(2 more run(s) differ too)" in message


def at_base_lr(_runs):
    """LARGE_LR edited to 1e-3, the shares measured at it: consistent, but not the task."""
    shares = {
        a: {s: _rerun_shares(a, s, TRAIN, PROBE, 1e-3, "cpu")["task"] for s in (0, 1)}
        for a in ("relu", "leaky_relu")
    }
    return shares, {"lr": 1e-3}


def on_other_data(_runs):
    """Trained on other images than train_small, and passed them: consistent, not the task."""
    other = tiny_split(256, 7)
    shares = {
        a: {s: _rerun_shares(a, s, other, PROBE, TASK_LR, "cpu")["task"] for s in (0, 1)}
        for a in ("relu", "leaky_relu")
    }
    return shares, {"train": other}


def other_probe(runs):
    return shares_by(runs), {"probe": TensorLoader(tiny_split(600, 8), 500)}


@pytest.mark.parametrize(
    ("make", "hint"),
    [
        (at_base_lr, "10 * LR"),
        (on_other_data, "is not the task's train_small"),
        (other_probe, "probe is not val_loader"),
    ],
    ids=["large-lr-edited", "other-training-data", "other-probe"],
)
@pytest.mark.slow
def test_silent_experiment_settings_are_the_task_s(task, runs, make, hint: str, capsys) -> None:
    """The check used to retrain with the learner's own lr and data: a report consistent with
    an edited LARGE_LR or another data set passed."""
    shares, settings = make(runs)
    fails(
        lambda v: run_experiment_check(shares, v, **settings),
        honest_verdict(shares),
        hint,
        "3.4",
        capsys,
    )


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ("output", "*output*"),
        ("first batch", "first batch of val_loader only"),
        ("last batch", "last batch of val_loader only"),
        ("layer mean", "mean of the per-layer shares"),
    ],
    ids=["counter-on-output", "counter-first-batch", "counter-last-batch", "mean-of-layer-shares"],
)
@pytest.mark.slow
def test_silent_experiment_names_the_counter_s_mistake(task, runs, mistake, hint, capsys) -> None:
    """Shares from a wrong Task 3.3 counter: the hint names it instead of blaming the protocol."""
    shares = shares_by(runs, mistake)
    message = fails(
        lambda v: run_experiment_check(shares, v), honest_verdict(shares), hint, "3.4", capsys
    )
    assert "protocol" not in message.split("Hint:")[1]


def made_up(runs):
    fake = {a: {s: min(v + 0.25, 1.0) for s, v in r.items()} for a, r in shares_by(runs).items()}
    return fake, honest_verdict(fake)


def swapped_arms(runs):
    shares = shares_by(runs)
    fake = {"relu": shares["leaky_relu"], "leaky_relu": shares["relu"]}
    return fake, honest_verdict(fake)


def counts_not_shares(runs):
    fake = {a: {s: v * 224 for s, v in r.items()} for a, r in shares_by(runs).items()}
    return fake, "within noise"


def one_seed(runs):
    return {a: {0: r[0]} for a, r in shares_by(runs).items()}, "within noise"


def overlapping_but_claimed(_runs):  # paired differences -0.1 and +0.3: within noise
    return {"relu": {0: 0.30, 1: 0.50}, "leaky_relu": {0: 0.40, 1: 0.20}}, "more in ReLU"


def clear_but_called_noise(_runs):  # paired differences 0.40 and 0.41: beyond noise
    return {"relu": {0: 0.50, 1: 0.52}, "leaky_relu": {0: 0.10, 1: 0.11}}, "within noise"


def other_seeds(runs):
    return {"relu": shares_by(runs)["relu"], "leaky_relu": {5: 0.1, 6: 0.2}}, "within noise"


def free_text(runs):
    return shares_by(runs), "ReLU dies more, I think"


@pytest.mark.parametrize(
    ("make", "hint"),
    [
        (made_up, "a rerun gave"),
        (swapped_arms, "the arms are swapped"),
        (counts_not_shares, "between 0 and 1"),
        (one_seed, "need 2 seeds"),
        (overlapping_but_claimed, "within noise"),
        (clear_but_called_noise, "is beyond seed noise"),
        (other_seeds, "different seeds"),
        (free_text, "one of the three strings"),
    ],
    ids=[
        "made-up-numbers",
        "swapped-arms",
        "counts-not-shares",
        "one-seed",
        "claims-a-difference-within-noise",
        "calls-a-real-difference-noise",
        "different-seeds-per-arm",
        "free-text-verdict",
    ],
)
@pytest.mark.slow
def test_silent_experiment_wrong_reports_fail(task, runs, make, hint: str, capsys) -> None:
    shares, verdict = make(runs)
    fails(lambda v: run_experiment_check(shares, v), verdict, hint, "3.4", capsys)
