"""The statistic spans all micro-batches of a step; padding-aware mode ignores padding."""

import pytest
import torch

import migu
from migu.core.reference import ReferenceStatistic

from tiny import batch, build, expected_layers, lora_llama


def _step_statistics(model, handle, batches):
    for b in batches:
        model(**b).loss.backward()
    stats = {k: v.clone() for k, v in handle.statistics().items()}
    handle.before_optimizer_step()
    kept = {n: r.kept_rows for n, r in handle.report().items()}
    handle.after_optimizer_step()
    model.zero_grad()
    return stats, kept


def _split(b, parts):
    return [{k: v.chunk(parts)[i] for k, v in b.items()} for i in range(parts)]


@pytest.mark.parametrize("arch", ["bert", "t5", "gpt2"])
def test_four_micro_batches_equal_one_batch(arch):
    model = build(arch)
    handle = migu.attach(model, threshold=0.7)
    full = batch(arch, size=8)
    one_stats, one_kept = _step_statistics(model, handle, [full])
    acc_stats, acc_kept = _step_statistics(model, handle, _split(full, 4))
    for name in one_stats:
        torch.testing.assert_close(acc_stats[name], one_stats[name], rtol=1e-5, atol=1e-5)
        assert torch.equal(acc_kept[name], one_kept[name]), name
    # and the statistic was reset after the step: one more step gives the same numbers again
    again, _ = _step_statistics(model, handle, [full])
    for name in one_stats:
        torch.testing.assert_close(again[name], one_stats[name])


def test_mean_reduction_divides_by_tokens():
    model = build("bert")
    handle = migu.attach(model, reduction="mean")
    model(**batch("bert", size=2, length=5)).loss.backward()
    mean = handle.statistics()
    handle.remove()
    model.zero_grad()
    handle = migu.attach(model, reduction="sum")
    model(**batch("bert", size=2, length=5)).loss.backward()
    total = handle.statistics()
    for name in mean:
        torch.testing.assert_close(mean[name] * 10, total[name])


@pytest.mark.parametrize("arch", ["bert", "t5"])
def test_padding_aware_mask_independent_of_padding(arch):
    kept = []
    for pad in (0, 3, 7):
        model = build(arch)
        handle = migu.attach(model, threshold=0.7, ignore_padding=True)
        model(**batch(arch, pad=pad)).loss.backward()
        handle.before_optimizer_step()
        kept.append({n: r.kept_rows for n, r in handle.report().items()})
        handle.remove()
    for name in kept[0]:
        assert torch.equal(kept[0][name], kept[1][name]), name
        assert torch.equal(kept[0][name], kept[2][name]), name


def test_padding_aware_statistic_matches_reference_on_both_t5_sides():
    model = build("t5")
    b = batch("t5", pad=4)
    names = expected_layers("t5", "all_linear")
    enc_mask, dec_mask = b["attention_mask"], b["labels"] != -100

    def token_mask(name, lead):
        # decoder-side layers read decoder tokens, except cross-attention keys/values
        decoder = name.startswith("decoder") and not (".EncDecAttention." in name and name[-1] in "kv")
        mask = dec_mask if decoder else enc_mask
        assert tuple(mask.shape) == tuple(lead)
        return mask

    ref = ReferenceStatistic(model, names, token_masks=token_mask)
    handle = migu.attach(model, ignore_padding=True)
    model(**b).loss.backward()
    stats = handle.statistics()
    for name in names:
        torch.testing.assert_close(stats[name].double(), ref.sums[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ignore_padding, tokens", [(False, 2 * 8), (True, 2 * 5)])
def test_padding_tokens_counted_only_by_default(ignore_padding, tokens):
    model = build("bert")
    handle = migu.attach(model, ignore_padding=ignore_padding)
    model(**batch("bert", size=2, length=5, pad=3)).loss.backward()
    counts = handle.token_counts()
    assert counts["bert.encoder.layer.0.attention.self.query"] == tokens
    assert counts["cls.predictions.transform.dense"] == tokens


def test_explicit_token_mask():
    model = build("llama")
    b = batch("llama", pad=3)
    handle = migu.attach(model, ignore_padding=True)
    handle.set_token_mask(input=b["attention_mask"])
    model(input_ids=b["input_ids"], labels=b["labels"]).loss.backward()
    explicit = handle.statistics()
    handle.remove()
    model.zero_grad()
    handle = migu.attach(model, ignore_padding=True)
    model(**b).loss.backward()
    for name, value in handle.statistics().items():
        torch.testing.assert_close(value, explicit[name])


def _dense_then_masked(arch, micro_batches, arm_before):
    """Gradients after the step's backwards and after ``before_optimizer_step``, arming the
    in-backward mask before backward number ``arm_before`` (None: never)."""
    model = lora_llama() if arch == "llama+lora" else build(arch)
    handle = migu.attach(model, threshold=0.7, fast_path=False)
    weights = {t.name: t.weight for s in handle.sources for t in s.targets}
    for k, b in enumerate(micro_batches):
        loss = model(**b).loss
        if k == arm_before:
            assert handle.mask_in_next_backward()
        loss.backward()
    after_backward = {n: p.grad.clone() for n, p in weights.items()}
    handle.before_optimizer_step()
    return after_backward, {n: p.grad.clone() for n, p in weights.items()}


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama+lora"])
def test_mask_in_last_backward_equals_mask_before_step(arch):
    """Armed before the last backward, the gradients are masked when backward returns (so before
    any clipping) and equal to the usual mask at the step; nothing changes at the step."""
    micro = _split(batch(arch.removesuffix("+lora"), size=8), 2)
    dense, usual = _dense_then_masked(arch, micro, None)
    early, final = _dense_then_masked(arch, micro, 1)
    assert any(not torch.equal(dense[n], usual[n]) for n in dense)  # the mask did something
    for name in usual:
        torch.testing.assert_close(early[name], usual[name], rtol=0, atol=0)
        torch.testing.assert_close(final[name], usual[name], rtol=0, atol=0)


def test_mask_in_backward_armed_too_early_is_an_error():
    """Armed before the first of two backwards, the rows would be chosen on half the statistic:
    the second backward says so instead of masking with that choice."""
    model = build("bert")
    handle = migu.attach(model, threshold=0.7, fast_path=False)
    first, second = _split(batch("bert", size=8), 2)
    assert handle.mask_in_next_backward()
    model(**first).loss.backward()
    with pytest.raises(RuntimeError, match="training forward ran after that"):
        model(**second).loss.backward()


def test_mask_in_backward_when_last_of_three_with_bias_masked():
    """``mask_in_backward(when)`` masks only in the backward ``when`` names, bias included."""
    micro = _split(batch("gpt2", size=9), 3)

    def step(in_backward):
        model = build("gpt2")
        handle = migu.attach(model, threshold=0.7, fast_path=False, mask_bias=True)
        params = {f"{t.name}.{k}": getattr(t, k) for s in handle.sources for t in s.targets for k in ("weight", "bias")}
        last = [False]
        assert handle.mask_in_backward(lambda: last[0])
        for k, b in enumerate(micro):
            last[0] = in_backward and k == len(micro) - 1
            model(**b).loss.backward()
        after_backward = {n: p.grad.clone() for n, p in params.items()}
        handle.before_optimizer_step()
        return after_backward, {n: p.grad.clone() for n, p in params.items()}

    grads = [step(False), step(True)]
    (dense, usual), (early, final) = grads
    for name in usual:
        assert torch.equal(early[name], usual[name]), name  # masked by the end of the last backward
        assert torch.equal(final[name], usual[name]), name
        if name.endswith("bias"):
            assert not torch.equal(dense[name], usual[name]), name  # and the bias was masked


def test_mask_in_backward_refuses_gradient_checkpointing():
    """Checkpointing runs forwards inside backward, after the rows were chosen: an error."""
    model = build("bert")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    handle = migu.attach(model, threshold=0.7, fast_path=False)
    assert handle.mask_in_next_backward()
    with pytest.raises(RuntimeError, match="gradient checkpointing"):
        model(**batch("bert", size=4)).loss.backward()


def test_mask_in_backward_not_armed_while_paused():
    model = build("bert")
    handle = migu.attach(model, threshold=0.7)
    handle.pause()
    assert handle.mask_in_next_backward() is False
    handle.resume()
    assert handle.mask_in_next_backward() is True
    handle.remove()
    assert not any(p._post_accumulate_grad_hooks for p in model.parameters())
