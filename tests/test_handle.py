"""Lifetime of the handle: pause/resume, remove, context manager, and bad input."""

import pytest
import torch

import migu
from migu import MiguConfig

from tiny import batch, build


def test_remove_restores_outputs_and_leaves_only_foreign_hooks():
    model = build("bert")
    calls = []
    foreign = model.bert.encoder.layer[0].attention.self.query.register_forward_hook(lambda *a: calls.append(1))
    b = batch("bert")
    with torch.no_grad():
        model.eval()
        reference = model(**b).logits
    model.train()
    handle = migu.attach(model, ignore_padding=True)
    model(**b).loss.backward()
    handle.remove()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**b).logits, reference)
    hooked = [
        n
        for n, m in model.named_modules()
        if m._forward_hooks or m._forward_pre_hooks or m._forward_hooks_with_kwargs or m._forward_pre_hooks_with_kwargs
    ]
    assert hooked == ["bert.encoder.layer.0.attention.self.query"]
    assert len(model.bert.encoder.layer[0].attention.self.query._forward_hooks) == 1
    n_calls = len(calls)
    with torch.no_grad():
        model(**b)
    assert len(calls) == n_calls + 1
    foreign.remove()


def test_context_manager_and_optimizer_hooks_removed():
    model = build("llama")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with migu.attach(model, optimizer=opt) as handle:
        assert handle.layer_names
        assert len(opt._optimizer_step_pre_hooks) == 1 and len(opt._optimizer_step_post_hooks) == 1
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    assert not any(m._forward_hooks for m in model.modules())
    with pytest.raises(RuntimeError, match="removed"):
        handle.before_optimizer_step()


def test_pause_lets_gradients_through_and_resume_masks():
    model = build("bert")
    handle = migu.attach(model, threshold=0.7)
    handle.pause()
    model(**batch("bert")).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    handle.before_optimizer_step()
    handle.after_optimizer_step()
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters() if p.grad is not None)
    assert all(v.abs().sum() == 0 for v in handle.statistics().values())
    handle.resume()
    model.zero_grad()
    model(**batch("bert")).loss.backward()
    handle.before_optimizer_step()
    q = model.bert.encoder.layer[0].attention.self.query.weight.grad
    assert int((q.abs().sum(1) == 0).sum()) == 32 - 10  # 32 rows, T = 0.7 keeps 32 - ceil(0.7 * 31)
    with handle.paused():
        assert handle.is_paused
    assert not handle.is_paused


def test_eval_and_no_grad_forwards_are_not_recorded():
    model = build("bert")
    handle = migu.attach(model)
    with torch.no_grad():
        model(**batch("bert"))
    model.eval()
    model(**batch("bert"))
    assert all(v.abs().sum() == 0 for v in handle.statistics().values())


def test_mask_twice_in_one_step_is_idempotent():
    model = build("bert")
    handle = migu.attach(model, threshold=0.5, selection="random")
    model(**batch("bert")).loss.backward()
    handle.before_optimizer_step()
    first = {n: r.kept_rows for n, r in handle.report().items()}
    handle.before_optimizer_step()
    assert all(torch.equal(first[n], r.kept_rows) for n, r in handle.report().items())


def test_report_diagnostics():
    model = build("bert")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    handle = migu.attach(model, threshold=0.7, optimizer=opt)
    for step in range(3):
        model(**batch("bert", seed=step)).loss.backward()
        opt.step()
        opt.zero_grad()
    layer = handle.report()["bert.encoder.layer.0.intermediate.dense"]
    assert layer.steps == 3 and layer.rows == 48
    assert layer.kept_fraction == pytest.approx(len(layer.kept_rows) / 48)
    assert layer.kept_fraction <= layer.ever_kept_fraction <= 1
    assert 0 < layer.mean_jaccard <= 1


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [-0.1, 1.0, 1.5])
def test_threshold_out_of_range(threshold):
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\)"):
        MiguConfig(threshold=threshold)


@pytest.mark.parametrize("threshold", ["0.7", True, None])
def test_threshold_wrong_type(threshold):
    with pytest.raises(TypeError, match="threshold"):
        MiguConfig(threshold=threshold)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("layers", "mlp", "unknown layer preset 'mlp'"),
        ("mask_mode", "weights", "mask_mode must be one of grad, update"),
        ("reduction", "max", "reduction must be one of"),
        ("selection", "topk", "selection must be one of"),
        ("include", ["(unclosed"], "not a valid regular expression"),
    ],
)
def test_bad_config_values(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        MiguConfig(**{field: value})


def test_unknown_config_field():
    with pytest.raises(TypeError, match="thresold"):
        migu.attach(build("bert"), thresold=0.5)


@pytest.mark.parametrize("kind", ["include", "exclude"])
def test_pattern_matching_no_layer(kind):
    with pytest.raises(ValueError, match=f"{kind} pattern 'q_proj' matches no layer"):
        migu.attach(build("bert"), **{kind: ["q_proj"]})


def test_model_without_supported_layer():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.LayerNorm(4))
    with pytest.raises(ValueError, match="no layer MIGU supports"):
        migu.attach(model)


def test_preset_with_no_layer():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    model[0].weight.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable layer"):
        migu.attach(model)


def test_not_a_module():
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        migu.attach("bert-base-uncased")


def test_mask_before_any_forward():
    handle = migu.attach(build("bert"))
    with pytest.raises(ValueError, match="before any training forward"):
        handle.before_optimizer_step()


def test_mask_without_gradients():
    model = build("bert")
    handle = migu.attach(model)
    model(**batch("bert"))
    with pytest.raises(RuntimeError, match="no gradient on any of its layers"):
        handle.before_optimizer_step()


def test_gradient_without_recorded_forward():
    model = build("bert")
    handle = migu.attach(model)
    model(**batch("bert")).loss.backward()
    handle.after_optimizer_step()  # resets the statistic, gradients stay
    model.bert.encoder.layer[0].attention.self.query(torch.randn(2, 32))
    with pytest.raises(ValueError, match="has a gradient but MIGU recorded no training forward"):
        handle.before_optimizer_step()


def test_attach_optimizer_type():
    with pytest.raises(TypeError, match=r"torch\.optim\.Optimizer"):
        migu.attach(build("bert"), optimizer=object())
