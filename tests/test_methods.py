"""Every registered method, alone and with MIGU: two tasks on a tiny model, killed after the
first and resumed (save, reload), evaluated; frozen parameters stay bit-identical."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from migu.bench import run, run_config
from migu.data import Example
from migu.methods import METHODS, TaskContext, build_methods
from migu.methods.lora import olora_loss
from migu.methods.replay import Replay, ReplayConfig

from tiny import build

BASES = [n for n in METHODS if not METHODS.trait(n, "chooses_rows")]
MASKABLE = [n for n in BASES if METHODS.trait(n, "masks_rows") is not False]  # (osf trains SVD factors)
ROWS = [n for n in METHODS if METHODS.trait(n, "chooses_rows") and n != "migu"]  # random_update, gradient, fisher
SPECS = BASES + [f"{b}+migu" for b in MASKABLE] + [f"{b}+{r}" for r in ROWS for b in ("finetune", "lora")]
SPECS += ["lora+replay+migu"]


class Stop(Exception):
    pass


def _config(bench_dir, out, method):
    return run_config({
        "model": "tiny-bert", "method": method, "seed": 0,
        "data": {"root": str(bench_dir), "order": ["alpha", "beta"], "n_train": 16, "n_test": 8},
        "train": {"lr": 1e-3, "batch_size": 8, "micro_batch_size": 4, "max_length": 32, "eval_batch_size": 8},
        "output_dir": str(out), "progress": False,
    })  # fmt: skip


@pytest.mark.parametrize("method", SPECS)
def test_every_method_trains_saves_resumes(bench_dir, tmp_path, method):
    config = _config(bench_dir, tmp_path, method)

    def stop_after_first(index, state):
        if index == 0:
            raise Stop

    with pytest.raises(Stop):
        run(config, on_task_end=stop_after_first)
    result = run(config)
    assert result["resumed_at"] == [1] and len(result["accuracy_matrix"]) == 3
    assert all(0 <= v <= 100 for row in result["accuracy_matrix"] for v in row)
    full = run(_config(bench_dir, tmp_path / "uninterrupted", method))
    assert full["accuracy_matrix"] == result["accuracy_matrix"]


@pytest.mark.parametrize(
    "method", ["lora", "inc_lora", "olora", "lora+migu", "inc_lora+migu", "moelora", "moelora+migu"]
)
def test_frozen_parameters_stay_bit_identical(method):
    from migu.data.tasks import Task
    from migu.formats import make_format
    from migu.models import load_model
    from migu.train import TrainConfig, make_accelerator, train_task

    bundle = load_model("tiny-bert")
    examples = [Example(f"text {i}", "a" if i % 2 else "b", ("a", "b"), "Which?", "t") for i in range(8)]
    task = Task("t", "Which?", ("a", "b"), examples, examples)
    methods = build_methods(method)
    model = bundle.model
    for m in methods:
        model = m.setup(model)
    config = TrainConfig(lr=1e-2, batch_size=4, micro_batch_size=4, max_length=16)
    fmt = make_format("encoder", bundle.tokenizer, 16)
    snapshots = []
    for index in range(2):
        ctx = TaskContext(index, task, 2, 0, 1)
        for m in methods:
            model = m.before_task(model, ctx)
        frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
        trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        train_task(model, fmt, examples, methods, ctx, config, make_accelerator(config), progress=False)
        for name, p in model.named_parameters():
            if name in frozen:
                assert torch.equal(p, frozen[name]), name
        assert any(not torch.equal(p, trained[n]) for n, p in model.named_parameters() if n in trained)
        assert all("lora_" in n or ".router." in n for n in trained)  # the base never trains under LoRA methods
        snapshots.append(set(trained))
    if method.startswith(("inc_lora", "olora")):
        assert all(".task1." in n for n in snapshots[1]) and all(".task0." in n for n in snapshots[0])


def test_replay_mixes_earlier_examples():
    replay = Replay(ReplayConfig(fraction=0.25))
    from migu.data.tasks import Task

    def task(name, n):
        ex = [Example(f"{name} {i}", "x", ("x", "y"), "", name) for i in range(n)]
        return Task(name, "", ("x", "y"), ex, ex)

    t1, t2, t3 = task("one", 40), task("two", 20), task("three", 12)
    assert len(replay.train_examples(t1.train, TaskContext(0, t1, 3, 0))) == 40
    replay.after_task(None, TaskContext(0, t1, 3, 0))
    mixed = replay.train_examples(t2.train, TaskContext(1, t2, 3, 0))
    assert sum(e.task == "one" for e in mixed) == 10 and sum(e.task == "two" for e in mixed) == 20
    replay.after_task(None, TaskContext(1, t2, 3, 0))
    mixed = replay.train_examples(t3.train, TaskContext(2, t3, 3, 0))
    assert [sum(e.task == n for e in mixed) for n in ("one", "two", "three")] == [10, 5, 12]
    restored = Replay(ReplayConfig(fraction=0.25))
    restored.load_state_dict(replay.state_dict())
    assert restored.memory == replay.memory


def test_olora_loss_zero_for_orthogonal_a_positive_otherwise():
    model = get_peft_model(build("llama"), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]),
                           adapter_name="task0")  # fmt: skip
    model.add_adapter("task1", LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    layers = [m for m in model.modules() if hasattr(m, "lora_A") and "task1" in m.lora_A]
    eye = torch.eye(32)
    with torch.no_grad():
        for layer in layers:
            layer.lora_A["task0"].weight.copy_(eye[:2])
            layer.lora_A["task1"].weight.copy_(eye[2:4])
    assert float(olora_loss(model, "task1", 0.5, 0.0)) == 0.0
    with torch.no_grad():
        layers[0].lora_A["task1"].weight.copy_(eye[1:3])
    assert float(olora_loss(model, "task1", 0.5, 0.0)) == pytest.approx(0.5)


def test_default_thresholds_per_combination():
    def threshold(spec):
        return next(m for m in build_methods(spec) if m.name == "migu").config.core.threshold

    assert threshold("migu") == threshold("lora+migu") == threshold("inc_lora+migu") == 0.7
    assert threshold("finetune+replay+migu") == 0.4 and threshold("olora+migu") == 0.1
    assert (
        next(m for m in build_methods("migu", {"migu": {"threshold": 0.5}}) if m.name == "migu").config.core.threshold
        == 0.5
    )
    with pytest.raises(ValueError, match="decide what trains"):
        build_methods("finetune+lora")


def _first_of_two_tasks(examples: int):
    """The tiny BERT and the context of the first of two tasks of `examples` examples, with the loss EWC needs."""
    from migu.data.tasks import Task
    from migu.formats import make_format
    from migu.models import load_model

    bundle = load_model("tiny-bert")
    fmt = make_format("encoder", bundle.tokenizer, 16)
    data = [Example(f"text {i}", "a" if i % 2 else "b", ("a", "b"), "Which?", "t") for i in range(examples)]
    ctx = TaskContext(0, Task("t", "Which?", ("a", "b"), data, data), 2, 0, 1,
                      lambda m, ex: fmt.loss(m, fmt.batch(ex)), 4)  # fmt: skip
    return bundle.model, ctx


def test_ewc_penalty_zero_at_anchor_positive_away():
    from migu.methods.ewc import Ewc, EwcConfig

    model, ctx = _first_of_two_tasks(8)
    ewc = Ewc(EwcConfig(weight=10.0, fisher_examples=8))
    assert ewc.extra_loss(model, ctx) is None
    ewc.after_task(model, ctx)
    assert float(ewc.extra_loss(model, ctx).detach()) == 0.0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    assert float(ewc.extra_loss(model, ctx).detach()) > 0.0


def test_ewc_fisher_is_the_mean_of_per_example_squared_gradients():
    from migu.data.tasks import Task
    from migu.formats import make_format
    from migu.methods.ewc import Ewc, EwcConfig
    from migu.models import load_model

    bundle = load_model("tiny-bert")
    model = bundle.model
    fmt = make_format("encoder", bundle.tokenizer, 16)
    examples = [Example(f"text number {i}", "a" if i % 2 else "b", ("a", "b"), "Which?", "t") for i in range(6)]
    task = Task("t", "Which?", ("a", "b"), examples, examples)
    loss = lambda m, ex: fmt.loss(m, fmt.batch(ex))  # noqa: E731
    model.eval()
    expected: dict[str, torch.Tensor] = {}
    for example in examples:
        model.zero_grad(set_to_none=True)
        loss(model, [example]).backward()
        for n, p in model.named_parameters():
            if p.grad is not None:
                expected[n] = expected.get(n, torch.zeros_like(p)) + p.grad.pow(2) / len(examples)
    model.zero_grad(set_to_none=True)
    model.train()

    exact, batched = Ewc(EwcConfig(fisher_examples=6)), Ewc(EwcConfig(fisher_examples=6, fisher_batch_size=6))
    for ewc in (exact, batched):
        ewc.after_task(model, TaskContext(0, task, 2, 0, 1, loss, 4))
    assert model.training and all(p.grad is None for p in model.parameters())
    for n, f in expected.items():
        torch.testing.assert_close(exact.fisher[n], f, rtol=1e-4, atol=1e-10)
    total = lambda e: sum(float(f.sum()) for f in e.fisher.values())  # noqa: E731
    assert total(batched) < total(exact)  # the squared mean gradient: per-example gradients cancel

    last = Ewc(EwcConfig(fisher_examples=6))
    assert last.after_task(model, TaskContext(1, task, 2, 0, 1, loss, 4)) == {} and not last.fisher


@pytest.mark.parametrize("method", ["lora", "inc_lora"])
def test_adapter_init_does_not_depend_on_what_ran_before(bench_dir, tmp_path, method):
    """A pretrained folder is loaded unseeded; the run seeds the adapters' draws itself, so lora and
    lora+migu (one after the other in a sweep) start from the same adapter."""
    from migu.models import load_model

    bundle = load_model("tiny-bert")
    folder = tmp_path / "pretrained"
    bundle.model.save_pretrained(folder)
    bundle.tokenizer.save_pretrained(folder)
    losses = []
    for prior in (1, 2):
        torch.manual_seed(prior)
        torch.rand(prior)  # whatever an earlier run in this process left behind
        config = _config(bench_dir, tmp_path / f"after{prior}", method)
        result = run(run_config({**config.to_dict(), "model": str(folder)}))
        losses.append([t["mean_loss"] for t in result["timings"][1:]])
    assert losses[0] == losses[1]


def test_lora_checkpoint_holds_adapters_not_the_frozen_base(bench_dir, tmp_path):
    config = _config(bench_dir, tmp_path, "inc_lora")
    sizes = {}

    def look(index, state):
        saved = torch.load(tmp_path / config.run_name() / "state" / state["checkpoint"], weights_only=False)
        params = [k for k in saved["model"] if "position_ids" not in k and "token_type_ids" not in k]
        sizes[index] = {k.split(".lora_")[1].split(".")[1] for k in params if ".lora_" in k}
        assert all(".lora_" in k for k in params), [k for k in params if ".lora_" not in k][:3]
        raise Stop

    with pytest.raises(Stop):
        run(config, on_task_end=look)
    with pytest.raises(Stop):
        run(config, on_task_end=look)  # resumed from the adapter-only checkpoint, trains task 2
    assert sizes == {0: {"task0"}, 1: {"task0", "task1"}}  # the frozen earlier adapter is kept too


def test_resume_from_a_whole_model_checkpoint_keeps_earlier_adapters(bench_dir, tmp_path, monkeypatch):
    import migu.bench.checkpoint as checkpoint

    config = _config(bench_dir, tmp_path, "inc_lora")

    def old_format(model, state, full=None):  # what migu wrote before adapter-only checkpoints
        state.pop("trained_parameters", None)
        state.pop("frozen_digest", None)
        return model.state_dict()

    def stop(index, state):
        raise Stop

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "changed_state", old_format)
        with pytest.raises(Stop):
            run(config, on_task_end=stop)
    kept = {}

    def look(index, state):
        saved = torch.load(tmp_path / config.run_name() / "state" / state["checkpoint"], weights_only=False)
        kept[index] = {k for k in saved["model"] if ".lora_A.task0." in k}

    result = run(config, on_task_end=look)
    assert kept[1], "the first task's adapter must stay in later checkpoints"
    full = run(_config(bench_dir, tmp_path / "uninterrupted", "inc_lora"))
    assert full["accuracy_matrix"] == result["accuracy_matrix"]


def test_resume_refuses_a_changed_frozen_base(bench_dir, tmp_path):
    from migu.models import load_model

    bundle = load_model("tiny-bert")
    folder = tmp_path / "pretrained"
    bundle.model.save_pretrained(folder)
    bundle.tokenizer.save_pretrained(folder)
    config = run_config({**_config(bench_dir, tmp_path / "out", "lora").to_dict(), "model": str(folder)})

    def stop(index, state):
        raise Stop

    with pytest.raises(Stop):
        run(config, on_task_end=stop)
    with torch.no_grad():
        bundle.model.embeddings.word_embeddings.weight.mul_(1.01)
    bundle.model.save_pretrained(folder)
    with pytest.raises(ValueError, match="model source changed"):
        run(config)


def test_olora_l2_term_is_the_sum_of_frobenius_norms():
    model = get_peft_model(build("llama"), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]),
                           adapter_name="task0")  # fmt: skip
    layers = [m for m in model.modules() if hasattr(m, "lora_A") and "task0" in m.lora_A]
    with torch.no_grad():
        for layer in layers:
            layer.lora_B["task0"].weight.fill_(0.5)
    expected = sum(float((m.lora_A["task0"].weight.norm() + m.lora_B["task0"].weight.norm()).detach()) for m in layers)
    assert float(olora_loss(model, "task0", 0.5, 2.0).detach()) == pytest.approx(2.0 * expected, rel=1e-5)


def test_ewc_penalty_sees_through_a_ddp_style_wrapper_and_refuses_a_foreign_model():
    from migu.methods.ewc import Ewc, EwcConfig

    class Wrapper(torch.nn.Module):  # names its parameters "module.<name>", as DDP does
        def __init__(self, module):
            super().__init__()
            self.module = module

    model, ctx = _first_of_two_tasks(4)
    ewc = Ewc(EwcConfig(weight=10.0, fisher_examples=4))
    ewc.after_task(model, ctx)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    direct = float(ewc.extra_loss(model, ctx).detach())
    assert direct > 0.0
    assert float(ewc.extra_loss(Wrapper(model), ctx).detach()) == pytest.approx(direct)
    with pytest.raises(ValueError, match=r"none of the .* parameters its Fisher was computed for"):
        ewc.extra_loss(build("llama"), ctx)
