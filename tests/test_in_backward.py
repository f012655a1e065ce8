"""mask_timing="in_backward": rows chosen when the step's last backward starts, gradients masked
as autograd produces them, so that engines consuming gradients in backward hooks get them masked."""

from __future__ import annotations

import pytest
import torch

import migu

from tiny import batch, build

TOL = {"rtol": 1e-5, "atol": 1e-6}


def _train(arch: str, steps: int = 3, **config) -> dict[str, torch.Tensor]:
    model = build(arch)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)
    handle = migu.attach(model, threshold=0.7, optimizer=opt, micro_batches_per_step=1, **config)
    for step in range(steps):
        model(**batch(arch, seed=step)).loss.backward()
        opt.step()
        opt.zero_grad()
    handle.remove()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_default_timing_is_the_step():
    assert migu.MiguConfig().mask_timing == "step"
    with pytest.raises(ValueError, match="mask_timing"):
        migu.MiguConfig(mask_timing="sometimes")


@pytest.mark.parametrize("arch, mode", [("bert", "grad"), ("gpt2", "update")])  # Linear and Conv1D
def test_one_micro_batch_equals_the_reference_path(arch, mode):
    reference = _train(arch, mask_mode=mode, fast_path=False, mask_bias=True)
    for fast_path in (True, False):  # False: gradient hooks alone
        ours = _train(arch, mask_mode=mode, mask_timing="in_backward", fast_path=fast_path, mask_bias=True)
        for name, p in ours.items():
            torch.testing.assert_close(p, reference[name], msg=name, **TOL)


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("fast_path", [True, False])
def test_with_accumulation_only_the_last_micro_batch_is_masked(fast_path):
    """Documented semantics: .grad = g1 + mask * g2 for two micro-batches, the mask chosen from the
    statistic of both forwards (the step-timed selection), g1 left as it was accumulated."""
    micro = [batch("bert", seed=1), batch("bert", seed=2)]
    plain = build("bert")
    separate = []
    for b in micro:
        plain(**b).loss.backward()
        separate.append(_grads(plain))
        plain.zero_grad()
    # the rows the step-timed path keeps for this step (statistic of both micro-batches)
    observer = build("bert")
    observe = migu.attach(observer, threshold=0.7, mask_mode="observe")
    for b in micro:
        observer(**b).loss.backward()
    observe.before_optimizer_step()
    kept = {n: r.kept_rows for n, r in observe.report().items()}

    model = build("bert")
    handle = migu.attach(model, threshold=0.7, mask_timing="in_backward", micro_batches_per_step=2, fast_path=fast_path)
    assert bool(handle.fast_path_layers) == fast_path
    model(**micro[0]).loss.backward()
    after_first = _grads(model)
    model(**micro[1]).loss.backward()
    handle.before_optimizer_step()  # changes no gradient in this timing
    grads = _grads(model)
    for name, g in separate[0].items():
        torch.testing.assert_close(after_first[name], g, msg=name, **TOL)  # first micro-batch: dense
    masked_layers = {t.name: s.name for s in handle.sources for t in s.targets}
    for name, g in grads.items():
        layer = name.removesuffix(".weight")
        expected = separate[0][name] + separate[1][name]
        if name.endswith(".weight") and layer in masked_layers:
            mask = torch.zeros(g.shape[0], dtype=torch.bool)
            mask[kept[masked_layers[layer]]] = True
            expected = separate[0][name] + separate[1][name] * mask[:, None]
            assert not (g[~mask] == 0).all(), name  # the earlier contribution of masked rows remains
        torch.testing.assert_close(g, expected, msg=name, **TOL)
    assert {n: r.kept_rows for n, r in handle.report().items()}.keys() == kept.keys()
    for name, rows in kept.items():
        assert torch.equal(handle.report()[name].kept_rows, rows), name


def test_a_consumer_of_gradients_in_backward_hooks_sees_them_masked():
    """An engine that takes each gradient as it is accumulated and leaves no .grad (as ZeRO-2)."""
    model = build("bert")
    consumed = {}
    names = {id(p): n for n, p in model.named_parameters()}

    def consume(p):
        consumed[names[id(p)]] = p.grad.clone()
        p.grad = None

    hooks = [p.register_post_accumulate_grad_hook(consume) for p in model.parameters()]  # before MIGU's
    handle = migu.attach(model, threshold=0.7, mask_timing="in_backward", micro_batches_per_step=1)
    model(**batch("bert")).loss.backward()
    handle.before_optimizer_step()  # no .grad anywhere: fine in this timing
    for source in handle.sources:
        kept = handle.report()[source.name].kept_rows
        for target in source.targets:
            g = consumed[f"{target.name}.weight"]
            rows = (g.abs().sum(1) > 0).nonzero().flatten()
            assert torch.equal(rows, kept), target.name
    handle.after_optimizer_step()
    handle.remove()
    for h in hooks:
        h.remove()


def test_update_mode_refuses_an_engine_without_grad():
    model = build("bert")
    for p in model.parameters():
        p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
    handle = migu.attach(model, mask_mode="update", mask_timing="in_backward", micro_batches_per_step=1)
    model(**batch("bert")).loss.backward()
    with pytest.raises(RuntimeError, match="master weights"):
        handle.before_optimizer_step()


def test_wrong_micro_batch_counts_are_errors():
    model = build("bert")
    handle = migu.attach(model, mask_timing="in_backward")
    with pytest.raises(RuntimeError, match="micro_batches_per_step"):
        model(**batch("bert")).loss.backward()
    handle.remove()
    model.zero_grad()
    handle = migu.attach(model, mask_timing="in_backward", micro_batches_per_step=2)
    model(**batch("bert", seed=1)).loss.backward()
    with pytest.raises(RuntimeError, match="fewer than micro_batches_per_step=2"):
        handle.before_optimizer_step()
    handle.remove()
    model.zero_grad()
    handle = migu.attach(model, mask_timing="in_backward", micro_batches_per_step=1, fast_path=False)
    model(**batch("bert", seed=1)).loss.backward()
    with pytest.raises(RuntimeError, match="backward pass 2"):
        model(**batch("bert", seed=2)).loss.backward()
    handle.remove()


def test_paused_and_removed_leave_gradients_and_hooks_alone():
    model, twin = build("bert"), build("bert")
    handle = migu.attach(model, mask_timing="in_backward", micro_batches_per_step=1)
    handle.pause()
    model(**batch("bert")).loss.backward()
    twin(**batch("bert")).loss.backward()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, **TOL)
    handle.remove()
    assert not any(p._backward_hooks for p in model.parameters())
    assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("timing", ["step", "in_backward"])
def test_reentrant_gradient_checkpointing_gives_the_same_parameters(timing):
    """Reentrant checkpointing runs a block's forward without gradients (MIGU records nothing
    there) and records it only when recomputed inside backward: such layers get their rows then."""
    results = []
    for checkpointing in (False, True):
        model = build("bert")
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        handle = migu.attach(model, optimizer=opt, mask_timing=timing, micro_batches_per_step=1)
        assert handle.fast_path_layers
        for step in range(2):
            model(**batch("bert", seed=step)).loss.backward()
            opt.step()
            opt.zero_grad()
        results.append({n: p.detach().clone() for n, p in model.named_parameters()})
    for name, p in results[0].items():
        torch.testing.assert_close(results[1][name], p, msg=name, **TOL)
