"""PEFT LoRA: A is masked by its own r-dim output, B by the combined output xW + scale * xAB."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

import migu

from tiny import batch, build, weight_rows_changed

CASES = {"llama": ["q_proj", "v_proj"], "gpt2": ["c_attn"]}


def _lora_model(arch):
    base = build(arch)
    config = LoraConfig(
        r=8,
        lora_alpha=32,
        lora_dropout=0.0,
        target_modules=CASES[arch],
        init_lora_weights=False,
        fan_in_fan_out=arch == "gpt2",
    )
    return get_peft_model(base, config)


def _lora_layers(model):
    return {n: m for n, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "get_base_layer")}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lora_a_and_b_statistics_and_kept_rows(arch):
    model = _lora_model(arch)
    layers = _lora_layers(model)
    inputs, outputs = {}, {}

    def capture(name):
        def hook(module, args, output):
            inputs[name], outputs[name] = args[0], output

        return hook

    hooks = [m.register_forward_hook(capture(n)) for n, m in layers.items()]
    handle = migu.attach(model, threshold=0.7)
    model(**batch(arch)).loss.backward()
    stats = handle.statistics()
    handle.before_optimizer_step()
    report = handle.report()
    expected = set()
    for name, layer in layers.items():
        x = inputs[name].detach().double()
        a = layer.lora_A["default"].weight.detach().double()
        b = layer.lora_B["default"].weight.detach().double()
        w = layer.get_base_layer().weight.detach().double()
        w = w.t() if arch == "gpt2" else w  # Conv1D keeps [in, out]
        bias = layer.get_base_layer().bias
        a_out = x @ a.t()
        combined = x @ w.t() + layer.scaling["default"] * (a_out @ b.t())
        if bias is not None:
            combined = combined + bias.detach().double()
        torch.testing.assert_close(combined, outputs[name].detach().double(), rtol=1e-4, atol=1e-5)
        for source, out in ((f"{name}.lora_A.default", a_out), (name, combined)):
            stat = out.abs().reshape(-1, out.shape[-1]).sum(0)
            torch.testing.assert_close(stats[source].double(), stat, rtol=1e-4, atol=1e-4)
            assert torch.equal(report[source].kept_rows, (stat >= torch.quantile(stat, 0.7)).nonzero().flatten())
        assert report[name].targets == [f"{name}.lora_B.default"]  # base weight frozen: not a target
        assert report[f"{name}.lora_A.default"].rows == 8
        expected |= {name, f"{name}.lora_A.default"}
        # masked gradient rows
        for source, module in (
            (f"{name}.lora_A.default", layer.lora_A["default"]),
            (name, layer.lora_B["default"]),
        ):
            keep = torch.zeros(report[source].rows, dtype=torch.bool)
            keep[report[source].kept_rows] = True
            assert (module.weight.grad[~keep] == 0).all()
            assert (module.weight.grad[keep] != 0).any()
    assert set(report) == expected
    for h in hooks:
        h.remove()
    handle.remove()


def test_lora_training_freezes_base_and_masks_rows():
    model = _lora_model("llama")
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    handle = migu.attach(model, threshold=0.7, optimizer=opt)
    for step in range(3):
        model(**batch("llama", seed=step)).loss.backward()
        before = {t.name: t.weight.detach().clone() for s in handle.sources for t in s.targets}
        opt.step()
        opt.zero_grad()
        report = handle.report()
        for source in handle.sources:
            keep = torch.zeros(source.rows(), dtype=torch.bool)
            keep[report[source.name].kept_rows] = True
            for t in source.targets:
                changed = weight_rows_changed(before[t.name], t.weight.detach())
                assert changed[keep].all() and not changed[~keep].any(), t.name
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    handle.remove()


def test_trainable_base_weight_masked_by_combined_output():
    model = _lora_model("llama")
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    layer.get_base_layer().weight.requires_grad_(True)
    handle = migu.attach(model, threshold=0.7)
    name = next(s.name for s in handle.sources if s.module is layer)
    assert handle.report()[name].targets == [f"{name}.base_layer", f"{name}.lora_B.default"]
    handle.remove()


def test_refresh_picks_up_new_adapter():
    model = _lora_model("llama")
    handle = migu.attach(model)
    before = len(handle.layer_names)
    model.add_adapter("task2", LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    model.base_model.set_adapter(["default", "task2"])
    for n, p in model.named_parameters():
        if "lora_" in n:
            p.requires_grad_("task2" in n)
    handle.refresh()
    assert len(handle.layer_names) == before
    assert all("task2" in n for n in handle.layer_names)
    handle.remove()


class _Composite(torch.nn.Module):
    """base(x) + up(down(x)): a layer that declares its parts to MIGU."""

    def __init__(self, d_in=6, d_out=10, r=3, up_rows=None):
        super().__init__()
        self.base, self.down = torch.nn.Linear(d_in, d_out), torch.nn.Linear(d_in, r, bias=False)
        self.up = torch.nn.Linear(r, up_rows or d_out, bias=False)
        self.base.weight.requires_grad_(False)

    def forward(self, x):
        return self.base(x) + self.up(self.down(x))[..., : self.base.out_features]

    def migu_parts(self):
        return [("base", self.base), ("up", self.up)], [("down", self.down)]


def test_composite_layer_parts_masked_by_combined_and_own_outputs():
    torch.manual_seed(0)
    model = torch.nn.Sequential(_Composite())
    x = torch.randn(4, 5, 6)
    handle = migu.attach(model, threshold=0.7)
    model(x).pow(2).sum().backward()
    stats, layer = handle.statistics(), model[0]
    handle.before_optimizer_step()
    report = handle.report()
    assert report["0"].targets == ["0.up"]  # the frozen base weight is not a target
    assert report["0.down"].targets == ["0.down"]
    with torch.no_grad():
        outs = {"0": layer(x), "0.down": layer.down(x)}
    for source, module in (("0", layer.up), ("0.down", layer.down)):
        stat = outs[source].abs().reshape(-1, outs[source].shape[-1]).sum(0)
        torch.testing.assert_close(stats[source], stat, rtol=1e-5, atol=1e-5)
        keep = stat >= torch.quantile(stat, 0.7)
        assert (module.weight.grad[~keep] == 0).all() and (module.weight.grad[keep] != 0).any()
    handle.remove()


def test_composite_layer_with_mismatched_rows_is_refused():
    with pytest.raises(ValueError, match=r"composite layer 0: .*differ in rows"):
        migu.attach(torch.nn.Sequential(_Composite(up_rows=12)), threshold=0.7)


def test_moelora_experts_b_masked_by_the_layer_output():
    from migu.methods import TaskContext, build_methods
    from migu.models import load_model

    model = load_model("tiny-bert").model
    methods = build_methods("moelora+migu", {})
    ctx = TaskContext(1, None, 3, 0, 1, None, 4)
    for method in methods:
        model = method.before_task(method.setup(model), ctx)
    report = methods[-1].handle.report()
    name = "encoder.layer.0.attention.self.query"
    assert report[name].targets == [f"{name}.lora_B.{e}" for e in range(3)]
    assert {f"{name}.router", f"{name}.lora_A.0"} <= set(report)
    assert not any(".lora_B." in source for source in report)  # no B is ranked by its own (zero) output


def test_composite_layer_listing_a_part_twice_is_refused():
    class Twice(_Composite):
        def migu_parts(self):
            return [("up", self.up)], [("down", self.down), ("again", self.down)]

    with pytest.raises(ValueError, match="lists a module twice"):
        migu.attach(torch.nn.Sequential(Twice()), threshold=0.7)


def test_moelora_wraps_gpt2_conv1d_and_starts_at_the_base_output():
    from migu.methods import TaskContext, build_methods

    from tiny import build

    model = build("gpt2").eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 5))
    with torch.no_grad():
        before = model(ids).logits
    methods = build_methods("moelora+migu", {})
    ctx = TaskContext(1, None, 2, 0, 1, None, 4)
    for method in methods:
        model = method.before_task(method.setup(model), ctx)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before)  # every expert's B starts at zero
    report = methods[-1].handle.report()
    name = "transformer.h.0.attn.c_attn"
    assert report[name].targets == [f"{name}.lora_B.{e}" for e in range(2)]
    with torch.no_grad():  # B = 0 would leave A without a gradient to mask
        for param_name, param in model.named_parameters():
            if ".lora_B." in param_name:
                param.normal_(0, 0.1)
    model.train()
    model(ids, labels=ids).loss.backward()
    methods[-1].handle.before_optimizer_step()
    rows = model.get_submodule(f"{name}.lora_A.0").weight.grad.abs().sum(1)
    assert (rows == 0).any() and (rows != 0).any()  # A's rows masked by A's own output, some kept


@pytest.mark.parametrize("method", ["lora", "osf"])
def test_making_an_adapter_prints_no_peft_deprecation(method):
    """PEFT reads transformers' deprecated ``is_gradient_checkpointing``: migu's adapters are made
    without that FutureWarning (issue 41 item 12), and without silencing any other warning."""
    import warnings

    from migu.methods import build_methods
    from migu.methods.compose import MethodStack

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        MethodStack(build_methods(method, {})).setup(build("llama"))
        warnings.warn("still shown", FutureWarning, stacklevel=1)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "is_gradient_checkpointing" in m]
    assert "still shown" in messages
