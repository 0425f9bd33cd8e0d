"""Chapter 3 ``check_*`` helpers: the right answer passes, each typical mistake fails, and the
course's own counters are refused in the write-it-yourself task."""

from __future__ import annotations

import pytest
import torch
from checks_support import fails, passes

import course_utils.diagnostics
import course_utils.hooks
from course_utils.checks._common import ShortcutRefused
from course_utils.checks.ch03 import (
    _rerun_silent_share,
    check_count_dead,
    check_epochs_to_reach,
    check_silent_experiment,
    check_silent_per_layer,
)
from course_utils.data import FashionMNISTTensors, TensorLoader
from course_utils.experiments import compare


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


@pytest.fixture(scope="module")
def tiny_data():
    g = torch.Generator().manual_seed(0)
    train = FashionMNISTTensors(
        torch.randint(0, 256, (256, 28, 28), generator=g, dtype=torch.uint8),
        torch.randint(0, 10, (256,), generator=g),
    )
    probe = TensorLoader(
        FashionMNISTTensors(
            torch.randint(0, 256, (64, 28, 28), generator=g, dtype=torch.uint8),
            torch.randint(0, 10, (64,), generator=g),
        ),
        32,
    )
    lr = 1e-2
    shares = {
        a: {s: _rerun_silent_share(a, s, train, probe, lr, "cpu") for s in (0, 1)}
        for a in ("relu", "leaky_relu")
    }
    return train, probe, lr, shares


def honest_verdict(shares) -> str:
    import pandas as pd

    runs = pd.DataFrame(
        {"variant": a, "seed": s, "v": v} for a, r in shares.items() for s, v in r.items()
    )
    c = compare(runs, "relu", "leaky_relu", "v")
    if c.beyond_noise:
        return "more in ReLU" if c.diff > 0 else "more in LeakyReLU"
    return "within noise"


def run_experiment_check(tiny_data, shares, verdict):
    train, probe, lr, _ = tiny_data
    check_silent_experiment(shares, verdict, train, probe, lr)


def test_silent_experiment_honest_report_passes(tiny_data, capsys) -> None:
    shares = tiny_data[3]
    passes(
        lambda v: run_experiment_check(tiny_data, shares, v),
        honest_verdict(shares),
        "3.4",
        capsys,
    )


def made_up(shares):
    fake = {a: {s: v + 0.25 for s, v in r.items()} for a, r in shares.items()}
    return fake, honest_verdict(fake)


def one_seed(shares):
    return {a: {0: r[0]} for a, r in shares.items()}, "within noise"


def overlapping_but_claimed(_shares):
    return {"relu": {0: 0.30, 1: 0.50}, "leaky_relu": {0: 0.20, 1: 0.40}}, "more in ReLU"


def clear_but_called_noise(_shares):
    return {"relu": {0: 0.50, 1: 0.51}, "leaky_relu": {0: 0.10, 1: 0.11}}, "within noise"


def other_seeds(shares):
    return {"relu": shares["relu"], "leaky_relu": {5: 0.1, 6: 0.2}}, "within noise"


def free_text(shares):
    return shares, "ReLU dies more, I think"


@pytest.mark.parametrize(
    ("make", "hint"),
    [
        (made_up, "a rerun gave"),
        (one_seed, "need 2 seeds"),
        (overlapping_but_claimed, "within noise."),
        (clear_but_called_noise, "this difference is real"),
        (other_seeds, "different seeds"),
        (free_text, "one of the three strings"),
    ],
    ids=[
        "made-up-numbers",
        "one-seed",
        "claims-a-difference-within-noise",
        "calls-a-real-difference-noise",
        "different-seeds-per-arm",
        "free-text-verdict",
    ],
)
def test_silent_experiment_wrong_reports_fail(tiny_data, make, hint: str, capsys) -> None:
    shares, verdict = make(tiny_data[3])
    fails(lambda v: run_experiment_check(tiny_data, shares, v), verdict, hint, "3.4", capsys)
