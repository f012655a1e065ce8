"""Observe mode, the kept-row masks of every mode, and the fast path's report with exact ties."""

from __future__ import annotations

import pytest
import torch

import migu
from migu.core.reference import ReferenceStatistic

from tiny import batch, build, expected_layers


def test_observe_records_the_selection_and_changes_nothing():
    observed, plain = build("bert"), build("bert")
    names = expected_layers("bert", "all_linear")
    ref = ReferenceStatistic(observed, names)
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (observed, plain)]
    handle = migu.attach(observed, threshold=0.7, optimizer=opts[0], mask_mode="observe", micro_batches_per_step=1)
    assert handle.fast_path_layers == []  # every gradient stays dense
    ever = {n: torch.zeros(r.rows, dtype=torch.bool) for n, r in handle.report().items()}
    for step in range(3):
        for model, opt in zip((observed, plain), opts, strict=True):
            model(**batch("bert", seed=step)).loss.backward()
            if model is observed:
                grads = {n: p.grad.clone() for n, p in observed.named_parameters()}
            opt.step()
            if model is plain:
                for n, p in plain.named_parameters():
                    assert torch.equal(grads[n], p.grad), n  # nothing masked
            opt.zero_grad()
        masks = handle.kept_masks()
        assert masks.keys() == set(names)
        for name in names:
            expected = ref.kept_rows(name, 0.7)
            last, every = masks[name]
            assert torch.equal(last.nonzero().flatten(), expected), (step, name)
            assert torch.equal(handle.report()[name].kept_rows, expected)
            ever[name][expected] = True
            assert torch.equal(every, ever[name])
        ref.sums = dict.fromkeys(names)
    for p, q in zip(observed.parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q)
    handle.reset_report()
    assert handle.kept_masks() == {}


@pytest.mark.parametrize("config", [{"mask_mode": "grad"}, {"mask_mode": "update"}, {"micro_batches_per_step": 1},
                                    {"mask_timing": "in_backward", "micro_batches_per_step": 1}])  # fmt: skip
def test_kept_masks_in_every_mode(config):
    model = build("llama")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    handle = migu.attach(model, threshold=0.5, optimizer=opt, **config)
    history = []
    for step in range(2):
        model(**batch("llama", seed=step)).loss.backward()
        opt.step()
        opt.zero_grad()
        history.append({n: r.kept_rows for n, r in handle.report().items()})
    masks = handle.kept_masks()
    assert masks.keys() == history[-1].keys()
    for name, (last, ever) in masks.items():
        assert last.dtype == ever.dtype == torch.bool and last.device.type == "cpu"
        assert torch.equal(last.nonzero().flatten(), history[-1][name])
        assert torch.equal(ever.nonzero().flatten(), torch.cat([h[name] for h in history]).unique())
    handle.remove()


def test_fast_path_report_lists_the_rows_that_got_a_gradient_with_exact_ties():
    layer = torch.nn.Linear(4, 8)
    with torch.no_grad():  # rows 2..7 identical: their statistic ties exactly, at the cut and above
        layer.weight[2:] = layer.weight[2]
        layer.bias[2:] = layer.bias[2]
        layer.weight[:2] *= 0.01
    x = torch.randn(16, 4)
    kept = {}
    for fast in (True, False):
        layer.zero_grad()
        handle = migu.attach(layer, threshold=0.5, micro_batches_per_step=1, fast_path=fast)
        layer(x).pow(2).sum().backward()
        handle.before_optimizer_step()
        with_grad = (layer.weight.grad.abs().sum(1) > 0).nonzero().flatten()
        report = handle.report()[""].kept_rows
        assert torch.equal(report, with_grad), (fast, report, with_grad)
        assert torch.equal(handle.kept_masks()[""][0].nonzero().flatten(), with_grad)
        kept[fast] = report
        handle.remove()
    assert len(kept[False]) == 6  # the reference keeps every tied row
    assert len(kept[True]) == 8 - migu.core.cut_index(8, 0.5) == 4  # the fast path as many as without ties
    assert set(kept[True].tolist()) <= set(kept[False].tolist())
