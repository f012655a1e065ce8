"""The rows MIGU keeps equal an independent computation from the definition, on every architecture."""

import pytest
import torch

import migu
from migu.core import cut_index
from migu.core.reference import ReferenceStatistic

from tiny import batch, build, expected_layers

ARCHS = ["bert", "roberta", "t5", "t5_gated", "llama", "gpt2"]


def _conv1d(name: str) -> bool:
    return ".c_attn" in name or ".c_fc" in name or ".c_proj" in name


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("preset", ["attention", "ffn", "all_linear"])
def test_targets_per_preset(arch, preset):
    model = build(arch)
    with migu.attach(model, layers=preset) as handle:
        assert sorted(handle.layer_names) == sorted(expected_layers(arch, preset))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.7])
def test_kept_rows_match_reference(arch, threshold):
    model = build(arch)
    names = expected_layers(arch, "all_linear")
    handle = migu.attach(model, threshold=threshold)
    ref = ReferenceStatistic(model, names)
    model(**batch(arch)).loss.backward()
    dense = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    handle.before_optimizer_step()
    report = handle.report()
    params = dict(model.named_parameters())
    for name in names:
        kept = report[name].kept_rows
        assert torch.equal(kept, ref.kept_rows(name, threshold)), name
        rows = report[name].rows
        assert len(kept) == rows - cut_index(rows, threshold), name
        if threshold == 0.0:
            assert len(kept) == rows
        grad, before = params[f"{name}.weight"].grad, dense[f"{name}.weight"]
        keep = torch.zeros(rows, dtype=torch.bool)
        keep[kept] = True
        rows_view = (lambda t: t.t()) if _conv1d(name) else (lambda t: t)
        assert torch.equal(rows_view(grad)[keep], rows_view(before)[keep]), name
        assert (rows_view(grad)[~keep] == 0).all(), name
        bias = params.get(f"{name}.bias")
        if bias is not None:  # bias untouched by default
            assert torch.equal(bias.grad, dense[f"{name}.bias"])
    ref.remove()
    handle.remove()


def test_kept_count_follows_threshold_exactly():
    # 10 rows, distinct statistics: T = 0.7 -> cut at ceil(0.7 * 9) = 7 -> keep 3
    layer = torch.nn.Linear(4, 10, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.arange(1.0, 11.0)[:, None].expand(10, 4))
    handle = migu.attach(layer, threshold=0.7)
    layer(torch.ones(3, 4)).sum().backward()
    handle.before_optimizer_step()
    assert handle.report()[""].kept_rows.tolist() == [7, 8, 9]


def test_lm_head_excluded_by_default_and_includable():
    model = build("llama")
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    with migu.attach(model) as handle:
        assert "lm_head" not in handle.layer_names
    with migu.attach(model, include_lm_head=True) as handle:
        assert "lm_head" in handle.layer_names


def test_tied_lm_head_excluded():
    model = build("gpt2")
    assert model.lm_head.weight is model.transformer.wte.weight
    with migu.attach(model) as handle:
        assert "lm_head" not in handle.layer_names


def test_include_and_exclude_patterns():
    model = build("llama")
    with migu.attach(model, include=[r"\.q_proj$", r"\.v_proj$"], exclude=[r"layers\.1\."]) as handle:
        assert handle.layer_names == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]


@pytest.mark.parametrize("arch", ["bert", "t5", "llama"])
@pytest.mark.parametrize("threshold", [0.5, 0.7])
def test_a_migu_step_equals_the_reference_step(arch, threshold):
    """``migu.attach`` + AdamW gives the weights of ``core.reference.reference_step``, the plain
    statement of the algorithm, after two steps (the second one sees moved weights)."""
    from migu.core.reference import reference_step

    plain, masked = build(arch), build(arch)
    masked.load_state_dict(plain.state_dict())
    names = expected_layers(arch, "all_linear")
    ref_opt = torch.optim.AdamW(plain.parameters(), lr=1e-2)
    opt = torch.optim.AdamW(masked.parameters(), lr=1e-2)
    with migu.attach(masked, threshold=threshold, optimizer=opt):
        for seed in (0, 1):
            inputs = batch(arch, seed=seed)
            ref_opt.zero_grad()
            reference_step(plain, lambda m, inputs=inputs: m(**inputs).loss, names, threshold, ref_opt)
            opt.zero_grad()
            masked(**inputs).loss.backward()
            opt.step()
    for (name, a), (_, b) in zip(plain.named_parameters(), masked.named_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), name
