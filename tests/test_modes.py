"""Masked rows stay put where the mode promises it; kept rows move."""

import pytest
import torch

import migu
from migu.core import cut_index

from tiny import batch, build, weight_rows_changed


def _targets(handle):
    return [(t, s.name) for s in handle.sources for t in s.targets]


def _train_and_check(arch, optimizer_cls, mode, steps, check_unchanged, **opt_kwargs):
    model = build(arch)
    opt = optimizer_cls(model.parameters(), **opt_kwargs)
    handle = migu.attach(model, threshold=0.7, mask_mode=mode, optimizer=opt)
    moved_masked = 0
    for step in range(steps):
        model(**batch(arch, seed=step)).loss.backward()
        before = {t.name: t.weight.detach().clone() for t, _ in _targets(handle)}
        opt.step()
        opt.zero_grad()
        report = handle.report()
        for target, source in _targets(handle):
            keep = torch.zeros(report[source].rows, dtype=torch.bool)
            keep[report[source].kept_rows] = True
            changed = weight_rows_changed(before[target.name], target.weight.detach(), target.rows_last)
            assert changed[keep].all(), f"kept rows of {target.name} did not change at step {step}"
            if check_unchanged:
                assert not changed[~keep].any(), f"masked rows of {target.name} moved at step {step}"
            moved_masked += int(changed[~keep].sum())
    handle.remove()
    return moved_masked


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_sgd_masked_rows_bit_identical(arch):
    _train_and_check(arch, torch.optim.SGD, "grad", steps=2, check_unchanged=True, lr=0.1)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_adamw_update_mode_masked_rows_bit_identical(arch):
    _train_and_check(arch, torch.optim.AdamW, "update", steps=4, check_unchanged=True, lr=1e-3, weight_decay=0.1)


def test_adamw_grad_mode_lets_momentum_move_masked_rows():
    # The official behaviour that `update` mode exists to remove: this shows the check can fail.
    moved = _train_and_check("llama", torch.optim.AdamW, "grad", steps=4, check_unchanged=False, lr=1e-3)
    assert moved > 0


def test_grad_mode_gradient_exactly_zero():
    layer = torch.nn.Linear(4, 8)
    handle = migu.attach(layer, threshold=0.5)
    layer(torch.randn(3, 4)).sum().backward()
    handle.before_optimizer_step()
    keep = torch.zeros(8, dtype=torch.bool)
    keep[handle.report()[""].kept_rows] = True
    assert (layer.weight.grad[~keep] == 0).all()
    assert torch.equal(layer.bias.grad, torch.ones(8) * 3)  # bias untouched


def test_mask_bias_option():
    layer = torch.nn.Linear(4, 8)
    handle = migu.attach(layer, threshold=0.5, mask_bias=True)
    layer(torch.randn(3, 4)).sum().backward()
    handle.before_optimizer_step()
    keep = torch.zeros(8, dtype=torch.bool)
    keep[handle.report()[""].kept_rows] = True
    assert (layer.bias.grad[~keep] == 0).all() and (layer.bias.grad[keep] == 3).all()


def test_bf16_autocast_trains_and_masks():
    model = build("llama")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    handle = migu.attach(model, threshold=0.7, optimizer=opt)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch("llama")).loss
    loss.backward()
    opt.step()
    for name, layer in handle.report().items():
        keep = torch.zeros(layer.rows, dtype=torch.bool)
        keep[layer.kept_rows] = True
        assert len(layer.kept_rows) == layer.rows - cut_index(layer.rows, 0.7)
        changed = weight_rows_changed(before[f"{name}.weight"], dict(model.named_parameters())[f"{name}.weight"])
        assert changed[keep].all() and not changed[~keep].any(), name
    assert all(v.dtype == torch.float32 for v in handle.statistics().values())


def test_bf16_weights_train_and_mask():
    model = build("bert").to(torch.bfloat16)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    handle = migu.attach(model, threshold=0.5, optimizer=opt)
    model(**batch("bert")).loss.backward()
    grads = {t.name: t.weight.grad for s in handle.sources for t in s.targets}
    opt.step()
    for name, layer in handle.report().items():
        keep = torch.zeros(layer.rows, dtype=torch.bool)
        keep[layer.kept_rows] = True
        assert (grads[name][~keep] == 0).all()


def test_random_selection_keeps_same_count_other_rows():
    model = build("bert")
    counts = {}
    rows = {}
    for selection in ("magnitude", "random"):
        model.zero_grad()
        handle = migu.attach(model, threshold=0.7, selection=selection, seed=3)
        model(**batch("bert")).loss.backward()
        handle.before_optimizer_step()
        report = handle.report()
        counts[selection] = {n: len(r.kept_rows) for n, r in report.items()}
        rows[selection] = {n: r.kept_rows for n, r in report.items()}
        handle.remove()
    assert counts["magnitude"] == counts["random"]
    assert any(not torch.equal(rows["magnitude"][n], rows["random"][n]) for n in rows["random"])


@pytest.mark.parametrize("mode, leaks", [("grad", True), ("update", False)])
def test_update_leak_diagnostic(mode, leaks):
    model = build("llama")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    handle = migu.attach(model, threshold=0.7, mask_mode=mode, optimizer=opt, measure_update_leak=True)
    assert handle.update_leak() is None
    for step in range(3):
        model(**batch("llama", seed=step)).loss.backward()
        opt.step()
        opt.zero_grad()
    leak = handle.update_leak()
    assert (0.0 < leak < 1.0) if leaks else leak == 0.0
    handle.reset_report()
    assert handle.update_leak() is None
