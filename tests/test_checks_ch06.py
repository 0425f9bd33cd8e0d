"""Chapter 6 ``check_*`` helpers: the right answer passes, each typical mistake fails."""

from __future__ import annotations

import pytest
import torch
from checks_support import fails, passes
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from course_utils import transfer
from course_utils.checks._common import ShortcutRefused
from course_utils.checks.ch06 import check_fine_tune, check_freeze_bn_block, check_freeze_conv1


def _freeze_right(model: nn.Module) -> torch.optim.Optimizer:
    model.conv1.requires_grad_(False)
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)


def test_freeze_conv1_right_answer_passes(capsys: pytest.CaptureFixture[str]) -> None:
    passes(check_freeze_conv1, _freeze_right, "6.1", capsys)


def _all_params(model: nn.Module) -> torch.optim.Optimizer:
    model.conv1.requires_grad_(False)
    return torch.optim.AdamW(model.parameters(), lr=1e-3)


def _not_frozen(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(
        [p for n, p in model.named_parameters() if not n.startswith("conv1")], lr=1e-3
    )


def _froze_too_much(model: nn.Module) -> torch.optim.Optimizer:
    model.conv1.requires_grad_(False)
    model.conv2.requires_grad_(False)
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)


def _only_weight(model: nn.Module) -> torch.optim.Optimizer:
    model.conv1.weight.requires_grad_(False)  # the bias still trains
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)


def _misses_head(model: nn.Module) -> torch.optim.Optimizer:
    model.conv1.requires_grad_(False)
    return torch.optim.Adam(model.conv2.parameters(), lr=1e-3)


def _froze_everything(model: nn.Module) -> torch.optim.Optimizer:
    model.requires_grad_(False)  # the whole model: Adam then gets an empty list and raises
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)


def _module_attribute(model: nn.Module) -> torch.optim.Optimizer:
    model.conv1.requires_grad = False  # a plain attribute on the module; parameters untouched
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)


def _lbfgs(model: nn.Module) -> torch.optim.Optimizer:
    model.conv1.requires_grad_(False)  # LBFGS's step() needs a closure: the check's step raises
    return torch.optim.LBFGS([p for p in model.parameters() if p.requires_grad], lr=1e-3)


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (_all_params, "give it only the trainable ones"),
        (_not_frozen, "requires_grad_(False)"),
        (_froze_too_much, "leave every other layer trainable"),
        (_only_weight, "requires_grad_(False)"),
        (_misses_head, "pass every trainable parameter"),
        (lambda model: None, "return the optimiser"),
        (_froze_everything, "every parameter of the model is frozen"),
        (_module_attribute, "sets a plain attribute on the module"),
        (_lbfgs, "one training step with your optimiser raised TypeError"),
    ],
    ids=[
        "optimiser-holds-frozen",
        "not-frozen",
        "froze-too-much",
        "only-weight-frozen",
        "misses-head",
        "returns-none",
        "froze-everything-empty-optimiser",
        "module-attribute-not-requires_grad_",
        "optimiser-step-needs-closure",
    ],
)
def test_freeze_conv1_wrong_answers_fail(answer, hint, capsys) -> None:
    fails(check_freeze_conv1, answer, hint, "6.1", capsys)


def _freeze_bn_right(model: nn.Module) -> None:
    for layer in (model.conv1, model.bn1):
        layer.requires_grad_(False)
    model.bn1.register_forward_pre_hook(lambda m, _args: setattr(m, "training", False))


def _freeze_bn_eval_once(model: nn.Module) -> None:
    model.conv1.requires_grad_(False)
    model.bn1.requires_grad_(False)
    model.bn1.eval()  # undone by the next model.train()


def _freeze_bn_momentum_zero(model: nn.Module) -> None:
    model.conv1.requires_grad_(False)
    model.bn1.requires_grad_(False)
    model.bn1.momentum = 0  # statistics stay put, but train mode normalises per batch


def _freeze_bn_identity(model: nn.Module) -> None:
    model.conv1.requires_grad_(False)
    model.bn1 = nn.Identity()


def _freeze_bn_everything(model: nn.Module) -> None:
    model.requires_grad_(False)  # every parameter: the check's optimiser gets an empty list
    model.bn1.register_forward_pre_hook(lambda m, _args: setattr(m, "training", False))


def _freeze_bn_whole_model_eval(model: nn.Module) -> None:
    for layer in (model.conv1, model.bn1):
        layer.requires_grad_(False)
    # eval() on the whole model before every call: bn2 and bn_fc stop adapting too
    model.register_forward_pre_hook(lambda m, _args: None if m.eval() is None else None)


def _freeze_bn_hook_returns_module(model: nn.Module) -> None:
    for layer in (model.conv1, model.bn1):
        layer.requires_grad_(False)
    # m.eval() returns m, and a pre-hook's return value replaces the layer's input
    model.bn1.register_forward_pre_hook(lambda m, _args: m.eval())


def _freeze_bn_fresh_frozen(model: nn.Module) -> None:
    model.conv1.requires_grad_(False)
    model.bn1 = FrozenBatchNorm2d(model.bn1.num_features)  # statistics not loaded: mean 0, var 1


def _freeze_bn_no_tracking(model: nn.Module) -> None:
    model.conv1.requires_grad_(False)
    model.bn1.requires_grad_(False)
    model.bn1.track_running_stats = False  # statistics stay, but every batch uses its own


def _freeze_bn_module_attribute(model: nn.Module) -> None:
    model.conv1.requires_grad = False  # plain attributes on the modules
    model.bn1.requires_grad = False
    model.bn1.register_forward_pre_hook(lambda m, _args: setattr(m, "training", False))


def _freeze_bn_changes_eps(model: nn.Module) -> None:
    for layer in (model.conv1, model.bn1):
        layer.requires_grad_(False)
    model.bn1.register_forward_pre_hook(lambda m, _args: setattr(m, "training", False))
    model.bn1.eps = 1.0  # the frozen layer no longer computes what the pretrained one did


def test_freeze_bn_right_answers_pass(capsys: pytest.CaptureFixture[str]) -> None:
    check_freeze_bn_block(_freeze_bn_right)
    from course_utils.transfer import freeze

    check_freeze_bn_block(lambda model: freeze(model, ["conv1", "bn1"]))
    assert capsys.readouterr().out.count("✅ Exercise 6.2:") == 2


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (_freeze_bn_eval_once, "running"),
        (lambda model: model.conv1.requires_grad_(False), "still require grad"),
        (_freeze_bn_momentum_zero, "momentum = 0 only stops"),
        (_freeze_bn_identity, "instead of replacing it with nn.Identity"),
        (_freeze_bn_everything, "froze more than block 1"),
        (_freeze_bn_whole_model_eval, "bn2"),
        (_freeze_bn_hook_returns_module, "must return None"),
        (_freeze_bn_fresh_frozen, "load_state_dict"),
        (_freeze_bn_no_tracking, "track_running_stats"),
        (_freeze_bn_module_attribute, "sets a plain attribute on the module"),
        (_freeze_bn_changes_eps, "eps"),
    ],
    ids=[
        "eval-once",
        "bn1-not-frozen",
        "momentum-zero",
        "bn1-replaced-by-identity",
        "froze-everything-empty-optimiser",
        "whole-model-in-eval",
        "pre-hook-returns-the-module",
        "frozen-bn-without-the-statistics",
        "track_running_stats-off",
        "module-attribute-not-requires_grad_",
        "eps-changed",
    ],
)
def test_freeze_bn_wrong_answers_fail(answer, hint, capsys) -> None:
    fails(check_freeze_bn_block, answer, hint, "6.2", capsys)


# --- 6.3: phases and parameter groups ------------------------------------------------------

BODY = ("conv1", "conv2")


def _body(model: nn.Module) -> list[nn.Parameter]:
    return [p for name in BODY for p in model.get_submodule(name).parameters()]


def _loop(model, batches, optimizer) -> None:
    model.train()
    for x, y in batches:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def _fine_tune(
    model,
    batches,
    epochs,
    unfreeze_after,
    head_lr,
    body_lr,
    *,
    late=0,
    add=True,
    lr_factor=None,
    hard_k=None,
    hard_epochs=None,
):
    k = hard_k if hard_k is not None else unfreeze_after
    epochs = hard_epochs if hard_epochs is not None else epochs
    for p in _body(model):
        p.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=head_lr)
    for epoch in range(epochs):
        if epoch == k + late:
            for p in _body(model):
                p.requires_grad_(True)
            if add:
                lr = body_lr if lr_factor is None else head_lr * lr_factor
                optimizer.add_param_group({"params": _body(model), "lr": lr})
        _loop(model, batches, optimizer)
    return optimizer


def _holds_all_from_start(model, batches, epochs, unfreeze_after, head_lr, body_lr):
    for p in _body(model):
        p.requires_grad_(False)
    head = [p for n, p in model.named_parameters() if n.startswith(("fc1", "fc2"))]
    optimizer = torch.optim.Adam(
        [{"params": head, "lr": head_lr}, {"params": _body(model), "lr": body_lr}]
    )
    for epoch in range(epochs):
        if epoch == unfreeze_after:
            for p in _body(model):
                p.requires_grad_(True)
        _loop(model, batches, optimizer)
    return optimizer


def _never_freezes(model, batches, epochs, unfreeze_after, head_lr, body_lr):
    head = [p for n, p in model.named_parameters() if n.startswith(("fc1", "fc2"))]
    optimizer = torch.optim.Adam([{"params": head, "lr": head_lr}])
    optimizer.add_param_group({"params": _body(model), "lr": body_lr})
    for _ in range(epochs):
        _loop(model, batches, optimizer)
    return optimizer


def _adds_body_twice(model, batches, epochs, unfreeze_after, head_lr, body_lr):
    for p in _body(model):
        p.requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=head_lr)  # holds the body already
    for epoch in range(epochs):
        if epoch == unfreeze_after:
            for p in _body(model):
                p.requires_grad_(True)
            optimizer.add_param_group({"params": _body(model), "lr": body_lr})  # ValueError
        _loop(model, batches, optimizer)
    return optimizer


def _library_freeze(model, batches, epochs, unfreeze_after, head_lr, body_lr):
    transfer.freeze(model, list(BODY))
    optimizer = torch.optim.Adam(transfer.trainable_parameters(model), lr=head_lr)
    for epoch in range(epochs):
        if epoch == unfreeze_after:
            optimizer.add_param_group(
                {"params": transfer.unfreeze(model, list(BODY)), "lr": body_lr}
            )
        _loop(model, batches, optimizer)
    return optimizer


def test_fine_tune_right_answer_passes(capsys: pytest.CaptureFixture[str]) -> None:
    passes(check_fine_tune, _fine_tune, "6.3", capsys)


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (lambda *a: _fine_tune(*a, add=False), "optimizer.add_param_group"),
        (_holds_all_from_start, "the optimiser held frozen parameters"),
        (_never_freezes, "frozen (requires_grad_(False)) for the first 1 epoch(s)"),
        (lambda *a: _fine_tune(*a, late=1), "unfreeze when epoch == unfreeze_after"),
        (lambda *a: _fine_tune(*a, lr_factor=1.0), "the body got the head's rate"),
        (lambda *a: _fine_tune(*a, hard_k=1), "unfreeze when epoch == unfreeze_after"),
        (lambda *a: _fine_tune(*a, lr_factor=0.1), "head_lr / 10, a fixed factor"),
        (lambda *a: _fine_tune(*a, hard_epochs=3), "(one pass per epoch)"),
        (lambda *a: None, "return the optimiser"),
        (_adds_body_twice, "a parameter is already in the optimiser"),
        (_library_freeze, "write freezing and unfreezing yourself"),
    ],
    ids=[
        "no-add_param_group",
        "optimiser-holds-frozen-body",
        "never-frozen",
        "unfreezes-an-epoch-late",
        "body-at-head-lr",
        "hard-coded-unfreeze-epoch",
        "body-at-head-lr-over-10",
        "hard-coded-three-epochs",
        "returns-none",
        "body-added-twice",
        "shortcut-transfer.freeze",
    ],
)
def test_fine_tune_wrong_answers_fail(answer, hint, capsys) -> None:
    fails(check_fine_tune, answer, hint, "6.3", capsys)


def test_fine_tune_refuses_aliases_and_restores_them(capsys) -> None:
    originals = (transfer.freeze, transfer.unfreeze, transfer.trainable_parameters)
    namespace = {"froze": transfer.freeze, "base": _fine_tune}
    exec(
        "def alias(model, *rest):\n"
        "    froze(model, ['conv1', 'conv2'])\n"
        "    return base(model, *rest)\n",
        namespace,
    )
    with pytest.raises(ShortcutRefused):
        check_fine_tune(namespace["alias"])
    assert (transfer.freeze, transfer.unfreeze, transfer.trainable_parameters) == originals
    assert namespace["froze"] is transfer.freeze
    capsys.readouterr()
