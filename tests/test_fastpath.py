"""The fast path (kept rows' weight gradients only) gives the reference path's parameters."""

import copy

import pytest
import torch

import migu

from tiny import batch, build


def _train(model, steps, autocast, penalty=0.0, **config):
    # SGD with momentum and weight decay: masked rows move in grad mode, stay in update mode.
    # (Adam would turn the rounding noise of gradients that are zero in exact arithmetic, such
    # as attention key biases, into full-size steps, hiding real differences behind noise.)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)
    handle = migu.attach(model, optimizer=opt, **{"threshold": 0.7, **config})
    arch = "gpt2" if hasattr(model, "transformer") else "llama" if hasattr(model, "model") else "bert"
    for step in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(**batch(arch, seed=step)).loss
        if penalty:  # a loss on the weights themselves (as EWC's): its gradient reaches masked rows too
            loss = loss + penalty * sum(p.pow(2).sum() for n, p in model.named_parameters() if n.endswith("weight"))
        loss.backward()
        opt.step()
        opt.zero_grad()
    layers = handle.fast_path_layers
    handle.remove()
    return layers


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
@pytest.mark.parametrize("mode", ["grad", "update"])
@pytest.mark.parametrize("autocast", [False, True])
def test_fast_equals_reference(arch, mode, autocast):
    fast, reference = build(arch), build(arch)
    fast_layers = _train(fast, 3, autocast, mask_mode=mode, micro_batches_per_step=1)
    ref_layers = _train(reference, 3, autocast, mask_mode=mode, micro_batches_per_step=1, fast_path=False)
    assert ref_layers == [] and len(fast_layers) > 0
    tol = {"rtol": 2e-2, "atol": 2e-4} if autocast else {"rtol": 1e-5, "atol": 1e-6}
    for (name, p), q in zip(fast.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name, **tol)


def test_fast_equals_reference_with_a_penalty_on_the_weights():
    fast, reference = build("bert"), build("bert")
    assert _train(fast, 3, False, penalty=0.05, micro_batches_per_step=1)
    _train(reference, 3, False, penalty=0.05, micro_batches_per_step=1, fast_path=False)
    for (name, p), q in zip(fast.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name, rtol=1e-5, atol=1e-6)


def test_small_chunks_give_the_same_result(monkeypatch):
    # the kept rows' gradients and the statistic are computed in chunks: force many of them
    import migu.core.fastpath as fastpath
    import migu.core.statistics as statistics

    chunked, reference = build("bert"), build("bert")
    _train(reference, 2, False, micro_batches_per_step=1)
    monkeypatch.setattr(fastpath, "CHUNK_VALUES", 16)
    monkeypatch.setattr(fastpath, "MIN_CHUNK_ROWS", 1)
    monkeypatch.setattr(statistics, "CHUNK_VALUES", 16)
    _train(chunked, 2, False, micro_batches_per_step=1)
    for (name, p), q in zip(chunked.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name, rtol=1e-5, atol=1e-6)


def test_fast_path_skips_masked_rows_gradient_work():
    layer = torch.nn.Linear(8, 10)
    handle = migu.attach(layer, threshold=0.7, micro_batches_per_step=1)
    x = torch.randn(4, 8, requires_grad=True)
    layer(x).pow(2).sum().backward()
    assert layer.weight.grad is not None and int((layer.weight.grad.abs().sum(1) > 0).sum()) == 10 - 7
    assert x.grad is not None and layer.bias.grad is not None and (layer.bias.grad != 0).all()
    kept_before = (layer.weight.grad.abs().sum(1) > 0).nonzero().flatten()
    handle.before_optimizer_step()
    assert torch.equal(handle.report()[""].kept_rows, kept_before)


def test_two_forwards_before_one_backward_are_fine():
    # the encoder format embeds texts and label strings in two forwards per micro-batch
    fast, reference = build("bert"), build("bert")
    for model, fast_path in ((fast, True), (reference, False)):
        handle = migu.attach(model, threshold=0.7, micro_batches_per_step=1, fast_path=fast_path)
        loss = model(**batch("bert", seed=1)).loss + model(**batch("bert", seed=2)).loss
        loss.backward()
        handle.before_optimizer_step()
        handle.remove()
    for p, q in zip(fast.parameters(), reference.parameters(), strict=True):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "config",
    [{}, {"micro_batches_per_step": 4}, {"micro_batches_per_step": 1, "selection": "random"},
     {"micro_batches_per_step": 1, "fast_path": False}],
)  # fmt: skip
def test_reference_path_where_fast_path_would_differ(config):
    with migu.attach(build("llama"), **config) as handle:
        assert handle.fast_path_layers == []


def test_accumulation_with_fast_path_declared_raises():
    model = build("llama")
    handle = migu.attach(model, micro_batches_per_step=1)
    model(**batch("llama", seed=0)).loss.backward()
    with pytest.raises(RuntimeError, match="training forward after a backward"):
        model(**batch("llama", seed=1))
    handle.remove()


def test_declaring_later_and_lora_layers():
    from peft import LoraConfig, get_peft_model

    # the fast path starts once one micro-batch per step is declared; a LoRA model gets none: its
    # LoRA layers are not plain, and their A matrices have r rows, nothing to skip
    handle = migu.attach(build("llama"))
    assert handle.fast_path_layers == []
    handle.set_micro_batches_per_step(1)
    assert handle.fast_path_layers
    handle.remove()
    model = get_peft_model(build("llama"), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    handle = migu.attach(model, micro_batches_per_step=1)
    assert any(n.endswith("lora_A.default") for n in handle.layer_names)
    assert handle.fast_path_layers == []
    handle.remove()


def test_copy_of_model_unaffected():
    model = build("llama")
    twin = copy.deepcopy(model)
    with migu.attach(model, micro_batches_per_step=1):
        pass
    assert not any(m._forward_hooks for m in twin.modules())


def test_fast_equals_reference_through_the_loop_with_clipping():
    # the loop masks before clipping, as the fast path (rows masked in backward) does: with a
    # clip that binds at every step, both paths must still end with the same parameters
    from migu.data import Example
    from migu.data.tasks import Task
    from migu.formats import make_format
    from migu.methods import TaskContext, build_methods
    from migu.models import load_model
    from migu.train import TrainConfig, make_accelerator, train_task

    examples = [Example(f"text number {i}", "a" if i % 3 else "b", ("a", "b"), "Which?", "t") for i in range(16)]
    task = Task("t", "Which?", ("a", "b"), examples, examples)
    config = TrainConfig(lr=1e-2, batch_size=8, micro_batch_size=8, max_length=16, max_grad_norm=1e-3)
    finals = {}
    for fast in (True, False):
        torch.manual_seed(0)
        bundle = load_model("tiny-bert")
        methods = build_methods("finetune+migu", {"migu": {"skip_first_task": False, "fast_path": fast}})
        model = bundle.model
        ctx = TaskContext(0, task, 1, 0, 1)
        for m in methods:
            model = m.before_task(model, ctx)
        train_task(model, make_format("encoder", bundle.tokenizer, 16), examples, methods, ctx, config,
                   make_accelerator(config), progress=False)  # fmt: skip
        assert bool(methods[-1].handle.fast_path_layers) == fast
        finals[fast] = {n: p.detach().clone() for n, p in model.named_parameters()}
    for name, p in finals[True].items():
        torch.testing.assert_close(p, finals[False][name], rtol=1e-5, atol=1e-6, msg=name)


def test_gradient_checkpointing_recompute_is_fine():
    # a checkpointed block re-runs its forward inside backward: not a second micro-batch
    fast, reference = build("bert"), build("bert")
    for model in (fast, reference):
        model.gradient_checkpointing_enable()
    assert _train(fast, 2, False, micro_batches_per_step=1)
    _train(reference, 2, False, micro_batches_per_step=1, fast_path=False)
    for (name, p), q in zip(fast.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name, rtol=1e-5, atol=1e-6)


class _Net(torch.nn.Module):
    def __init__(self, first: torch.nn.Module) -> None:
        super().__init__()
        self.first, self.second = first, torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu_(self.first(x)))  # in place on the masked layer's output


class _TanhWeightLinear(torch.nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, torch.tanh(self.weight), self.bias)


@pytest.mark.parametrize("first", [torch.nn.Linear, _TanhWeightLinear])
def test_inplace_ops_and_linear_subclasses(first):
    results = {}
    for fast in (True, False):
        torch.manual_seed(0)
        net = _Net(first(8, 16))
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        handle = migu.attach(net, threshold=0.5, optimizer=opt, micro_batches_per_step=1, fast_path=fast)
        for step in range(3):
            net(torch.randn(32, 8, generator=torch.Generator().manual_seed(step))).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
        # a subclass with its own forward is left to the reference path
        assert handle.fast_path_layers == (["first", "second"] if fast and first is torch.nn.Linear else
                                           ["second"] if fast else [])  # fmt: skip
        results[fast] = [p.detach().clone() for p in net.parameters()]
    for p, q in zip(results[True], results[False], strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_paused_between_forward_and_backward_keeps_the_gradient_dense():
    layer = torch.nn.Linear(8, 16)
    handle = migu.attach(layer, threshold=0.7, micro_batches_per_step=1)
    assert handle.fast_path_layers
    out = layer(torch.randn(32, 8))
    handle.pause()
    out.pow(2).mean().backward()
    handle.resume()
    assert (layer.weight.grad.abs().sum(1) > 0).all()  # no row dropped by an empty statistic


def test_process_group_started_after_attaching_gets_dense_gradients(monkeypatch):
    # the fast path was chosen in one process; if a process group exists by the backward, the
    # rows must come from the reduced statistic before the step: compute the dense gradient
    from migu.core import fastpath, statistics

    layer = torch.nn.Linear(8, 16)
    handle = migu.attach(layer, threshold=0.7, micro_batches_per_step=1)
    assert handle.fast_path_layers
    out = layer(torch.randn(32, 8))
    for module in (fastpath, statistics):  # the modules that ask how many ranks there are
        monkeypatch.setattr(module, "distributed_world", lambda: 2)
    out.pow(2).mean().backward()
    assert (layer.weight.grad.abs().sum(1) > 0).all()


KERNELS = ("gather", "index_select", "dense")


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the calls of each fast-path kernel (the kernels still run)."""
    from migu.core import fastpath

    calls = dict.fromkeys(KERNELS, 0)
    for name in KERNELS:

        def counted(*args, _name=name, _kernel=fastpath.KERNEL_FUNCTIONS[name]):
            calls[_name] += 1
            return _kernel(*args)

        monkeypatch.setitem(fastpath.KERNEL_FUNCTIONS, name, counted)
    return calls


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("threshold", [0.7, 0.95])
def test_every_kernel_gives_the_same_parameters(arch, autocast, threshold, kernel_calls):
    # auto may pick gather or index_select for any layer: they must give the same bits; dense and
    # the reference path the same parameters to rounding (a multi-threaded BLAS may split a full
    # product and a product of some rows differently). T = 0.95 keeps 1-3 rows of the tiny
    # layers: every kernel sends such thin products to dense
    runs = {}
    for kernel in (*KERNELS, "auto"):
        before = dict(kernel_calls)
        model = build(arch)
        assert _train(model, 3, autocast, micro_batches_per_step=1, fast_path_kernel=kernel, threshold=threshold)
        ran = {k for k in KERNELS if kernel_calls[k] > before[k]}
        if kernel != "auto" and threshold == 0.7:
            assert ran == {kernel}, (kernel, ran)  # the forced kernel is the one that ran
        runs[kernel] = _params(model)
    reference = build(arch)
    _train(reference, 3, autocast, micro_batches_per_step=1, fast_path=False, threshold=threshold)
    for kernel in ("index_select", "auto"):
        assert all(torch.equal(p, q) for p, q in zip(runs[kernel], runs["gather"], strict=True)), kernel
    tol = {"rtol": 2e-2, "atol": 2e-4} if autocast else {"rtol": 1e-5, "atol": 1e-6}
    for other in (runs["dense"], _params(reference)):
        for p, q in zip(runs["auto"], other, strict=True):
            torch.testing.assert_close(p, q, **tol)


@pytest.mark.parametrize("rows_last", [False, True])
@pytest.mark.parametrize("kept", [1, 3, 4, 13, 300, 517])
def test_kernels_agree_bit_for_bit_with_thin_chunks(monkeypatch, rows_last, kept):
    # chunks forced thin (as long batches make them): none under 4 rows; the timed kernels give
    # the same bits, dense the same values
    from migu.core import fastpath

    monkeypatch.setattr(fastpath, "MIN_CHUNK_ROWS", 1)
    monkeypatch.setattr(fastpath, "CHUNK_VALUES", 700 * 5)  # 5 rows a chunk at 700 tokens
    torch.manual_seed(kept)
    g, xs = torch.randn(700, 600), torch.randn(700, 96)
    rows = torch.randperm(600)[:kept].sort().values
    results = [fastpath.KernelChoice(k).weight_grad(g, xs, rows, rows_last, torch.float32) for k in KERNELS]
    assert torch.equal(results[1], results[0])
    torch.testing.assert_close(results[2], results[0], rtol=1e-5, atol=1e-4)
    full = (g.t() @ xs).t() if rows_last else g.t() @ xs
    kept_part = results[0][:, rows] if rows_last else results[0][rows]
    torch.testing.assert_close(kept_part, full[:, rows] if rows_last else full[rows], rtol=1e-5, atol=1e-4)
    assert results[0].is_contiguous() and results[2].is_contiguous()
    assert not (results[0].abs().sum(0 if rows_last else 1) > 0)[~torch.isin(torch.arange(600), rows)].any()


def test_calibrated_choice_mixing_kernels_per_layer(monkeypatch):
    # force a different kernel per layer shape (as timing would on some machine): same result
    from migu.core.fastpath import TIMED, KernelChoice

    picks = iter(TIMED * 10)

    def calibrate(self, key, args):
        self.chosen[key] = next(picks)
        return self.chosen[key]

    fixed = build("llama")
    _train(fixed, 3, False, micro_batches_per_step=1, fast_path_kernel="gather")
    monkeypatch.setattr(KernelChoice, "_calibrate", calibrate)
    mixed = build("llama")
    handle = migu.attach(mixed, threshold=0.7, micro_batches_per_step=1)
    opt = torch.optim.SGD(mixed.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)
    handle.attach_optimizer(opt)
    for step in range(3):
        mixed(**batch("llama", seed=step)).loss.backward()
        opt.step()
        opt.zero_grad()
    chosen = handle.fast_path_kernels()
    handle.remove()
    assert len(set(chosen.values())) > 1, chosen
    for p, q in zip(_params(mixed), _params(fixed), strict=True):
        assert torch.equal(p, q)


def test_auto_times_each_shape_once(kernel_calls):
    from migu.core.fastpath import KernelChoice

    choice = KernelChoice("auto")
    g, xs = torch.randn(300, 64), torch.randn(300, 32)
    rows = torch.tensor([1, 5, 9, 40])
    first = choice.weight_grad(g, xs, rows, False, torch.float32)
    (key,) = choice.chosen
    assert key[4] == 512 and set(choice.timings[key]) == {"gather", "index_select"}  # 300 tokens -> 512
    assert kernel_calls["dense"] == 0
    assert all(kernel_calls[k] == choice.trials + (k == choice.chosen[key]) for k in ("gather", "index_select"))
    again = choice.weight_grad(g[:280], xs[:280], rows, False, torch.float32)  # same bucket: no new timing
    assert list(choice.chosen) == [key] and sum(kernel_calls.values()) == 2 * choice.trials + 2
    expected = g.t() @ xs
    assert torch.equal(first[rows], expected[rows]) and not first[[0, 2, 63]].any()
    assert torch.equal(again[rows], (g[:280].t() @ xs[:280])[rows])


def test_unknown_kernel_is_refused():
    with pytest.raises(ValueError, match="fast_path_kernel"):
        migu.MiguConfig(fast_path_kernel="fastest")


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_fast_path_statistic_equals_the_reference_paths(arch):
    """The fast path computes its statistic in the forward hook that wraps the layer's output, the
    same pass the reference path records with: equal bits, and equal to |x W^T + b| summed over
    the tokens, computed here directly from each layer's input."""
    fast, reference = build(arch), build(arch)
    inputs = {}
    for name, module in reference.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            module.register_forward_hook(lambda m, args, out, name=name: inputs.__setitem__(name, args[0].detach()))
    handles = [migu.attach(m, threshold=0.7, micro_batches_per_step=1, fast_path=f)
               for m, f in ((fast, True), (reference, False))]  # fmt: skip
    for model in (fast, reference):
        model(**batch(arch, seed=0)).loss.backward()
    assert handles[0].fast_path_layers and not handles[1].fast_path_layers
    on_fast, on_reference = handles[0].statistics(), handles[1].statistics()
    assert on_fast.keys() == on_reference.keys()
    for name, value in on_fast.items():
        assert torch.equal(value, on_reference[name]), name
        module = reference.get_submodule(name)
        x = inputs[name].reshape(-1, inputs[name].shape[-1])
        if isinstance(module, torch.nn.Linear):
            direct = torch.nn.functional.linear(x, module.weight, module.bias)
        else:  # GPT-2's Conv1D: weight [in, out]
            direct = x @ module.weight + module.bias
        torch.testing.assert_close(value, direct.abs().sum(0), rtol=1e-5, atol=1e-5, msg=name)
