"""Row scores besides MIGU's magnitude (``migu.core.scores``): the step's gradient rows, given
scores, and FGGM's per-task Fisher rows, each against a direct computation on tiny models."""

from types import SimpleNamespace

import pytest
import torch

import migu
from migu.core.config import MiguConfig
from migu.methods import TaskContext, build_methods
from migu.methods.fisher import FisherRows

from tiny import batch, build, expected_layers

ARCHS = ["bert", "t5", "llama", "gpt2"]


def _rows_last(name: str) -> bool:  # GPT-2's Conv1D keeps output channels last
    return any(part in name for part in (".c_attn", ".c_fc", ".c_proj"))


def _top(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """The rows at or above the T-quantile (MIGU's rule), by the definition."""
    return (scores >= torch.quantile(scores.double(), threshold).float()).nonzero().flatten()


@pytest.mark.parametrize("arch", ARCHS)
def test_gradient_rows_are_the_largest_gradient_rows(arch):
    model = build(arch)
    names = expected_layers(arch, "all_linear")
    handle = migu.attach(model, threshold=0.7, selection="gradient")
    model(**batch(arch)).loss.backward()
    params = dict(model.named_parameters())
    dense = {n: params[f"{n}.weight"].grad.clone() for n in names}
    handle.before_optimizer_step()
    report = handle.report()
    for name in names:
        grad = dense[name].t() if _rows_last(name) else dense[name]
        expected = _top(grad.float().pow(2).sum(1), 0.7)
        assert torch.equal(report[name].kept_rows, expected), name
        after = params[f"{name}.weight"].grad
        after = after.t() if _rows_last(name) else after
        keep = torch.zeros(grad.shape[0], dtype=torch.bool)
        keep[expected] = True
        assert torch.equal(after[keep], grad[keep]) and (after[~keep] == 0).all(), name
    handle.remove()


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_given_scores_choose_the_rows_until_set_again(arch):
    model = build(arch)
    names = expected_layers(arch, "all_linear")
    handle = migu.attach(model, threshold=0.5, selection="given")
    model(**batch(arch)).loss.backward()
    with pytest.raises(ValueError, match="no row scores were set"):
        handle.before_optimizer_step()
    handle.after_optimizer_step()
    rows = {s.name: s.rows() for s in handle.sources}
    scores = {n: torch.randn(rows[n], generator=torch.Generator().manual_seed(i)) for i, n in enumerate(names)}
    handle.set_row_scores(scores)
    for _ in range(2):  # the same rows at every step
        model.zero_grad()
        model(**batch(arch, seed=1)).loss.backward()
        handle.before_optimizer_step()
        report = handle.report()
        for name in names:
            assert torch.equal(report[name].kept_rows, _top(scores[name], 0.5)), name
        handle.after_optimizer_step()
    with pytest.raises(ValueError, match="rows, got scores of shape"):
        handle.set_row_scores({names[0]: torch.ones(3)})
    with pytest.raises(ValueError, match="are not layers of this handle"):
        handle.set_row_scores({"nope": torch.ones(3)})
    handle.remove()


def test_scores_read_at_the_step_refuse_masking_in_backward():
    for selection in ("gradient", "given"):
        with pytest.raises(ValueError, match="needs mask_timing='step'"):
            MiguConfig(selection=selection, mask_timing="in_backward")


@pytest.mark.parametrize("arch", ARCHS)
def test_fisher_rows_equal_an_explicit_per_example_gradient_loop(arch):
    """FGGM's score: per row, the mean over examples of the squared per-example gradient of the
    loss, summed over the row's inputs; the top 1 - T rows are kept for the whole task."""
    model = build(arch)
    examples = [batch(arch, seed=s, size=1) for s in range(4)]

    def batch_loss(m, chunk):
        return torch.stack([m(**inputs).loss for inputs in chunk]).mean()

    reference = build(arch)
    reference.load_state_dict(model.state_dict())
    reference.eval()
    names = expected_layers(arch, "all_linear")
    params = dict(reference.named_parameters())
    expected = {n: torch.zeros(params[f"{n}.weight"].shape) for n in names}
    for inputs in examples:  # one backward per example
        reference.zero_grad()
        reference(**inputs).loss.backward()
        for n in names:
            expected[n] += params[f"{n}.weight"].grad.pow(2) / len(examples)
    task = SimpleNamespace(name="t", train=examples)  # (the method reads the task's training examples)
    (_, fisher) = build_methods("finetune+fisher", {"fisher": {"fisher_examples": 4, "skip_first_task": False}})
    assert isinstance(fisher, FisherRows)
    fisher.before_task(model, TaskContext(0, task, 2, 0, 1, batch_loss))
    scores = fisher.handle.row_scores()
    for n in names:
        rows = expected[n].sum(0 if _rows_last(n) else 1)
        assert torch.allclose(scores[n], rows, rtol=1e-5, atol=1e-12), n
    model(**examples[0]).loss.backward()  # a training step keeps the Fisher rows
    fisher.before_optimizer_step(model, None)
    report = fisher.handle.report()
    for n in names:
        assert torch.equal(report[n].kept_rows, _top(scores[n], 0.7)), n
    state = fisher.state_dict()
    assert set(state["row_scores"]) == set(names)
    fisher.handle.set_row_scores({names[0]: torch.zeros(scores[names[0]].shape)})
    fisher.load_state_dict(state)  # a resume within the task keeps the task's mask
    assert torch.equal(fisher.handle.row_scores()[names[0]], scores[names[0]])
    assert fisher.config.to_dict()["fisher_examples"] == 4 and fisher.config.core.selection == "given"
    fisher.handle.remove()


def test_bad_score_settings_are_one_line():
    with pytest.raises(ValueError, match=r"methods\.fisher\.fisher_examples must be at least 1"):
        build_methods("finetune+fisher", {"fisher": {"fisher_examples": 0}})
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['fishr'\]"):
        build_methods("finetune+fishr")
    with pytest.raises(ValueError, match="both choose the rows"):
        build_methods("finetune+fisher+migu")


@pytest.mark.parametrize("arch", ARCHS)
def test_freeze_bottom_keeps_the_bottom_blocks_and_embeddings_as_pretrained(arch):
    from migu.methods.freeze_bottom import FreezeBottom, FreezeBottomConfig, transformer_blocks

    model = build(arch)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stacks = transformer_blocks(model)
    assert all(len(stack) == 2 for stack in stacks) and len(stacks) == (2 if arch == "t5" else 1)
    model = FreezeBottom(FreezeBottomConfig(blocks=1)).setup(model)
    frozen = {f"{name}." for stack in stacks for name, _ in stack[:1]}
    embedding = next(n for n, p in model.named_parameters() if p is model.get_input_embeddings().weight)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**batch(arch)).loss.backward()
    optimizer.step()
    for name, param in model.named_parameters():
        still = torch.equal(param, before[name])
        if name.startswith(tuple(frozen)) or name == embedding:
            assert still and not param.requires_grad, name
        elif param.grad is not None and param.grad.abs().sum() > 0:
            assert not still, name
    with pytest.raises(ValueError, match="would freeze every block"):
        FreezeBottom(FreezeBottomConfig(blocks=2)).setup(build(arch))


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_osf_merges_each_task_and_preserves_more_each_time(arch):
    """PEFT's OSF per task: the previous task's update is merged into the weights, and the next
    wrapping preserves a larger share of singular directions (first_rank -> last_rank)."""
    from peft import PeftModel

    from migu.methods.osf import Osf, OsfMethodConfig, task_rank

    config = OsfMethodConfig(first_rank=0.25, last_rank=0.75)
    assert [task_rank(config, i, 3) for i in range(3)] == [0.25, 0.5, 0.75]
    method = Osf(config)
    task = SimpleNamespace(name="t", train=[])
    model = method.before_task(build(arch), TaskContext(0, task, 3, 0, 1))
    assert isinstance(model, PeftModel) and model.peft_config["default"].effective_rank == 0.25
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and len(trainable) < len(list(model.parameters()))
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    model(**batch(arch)).loss.backward()
    optimizer.step()
    model.eval()
    trained = model(**batch(arch, seed=1)).logits.detach()
    model = method.before_task(model, TaskContext(1, task, 3, 0, 1))  # merged, wrapped again
    model.eval()
    assert model.peft_config["default"].effective_rank == 0.5
    assert torch.allclose(model(**batch(arch, seed=1)).logits, trained, atol=1e-4)  # the update was kept
    assert method.rewrites_weights
    with pytest.raises(ValueError, match="osf trains no weight rows that migu could mask"):
        build_methods("osf+migu")
    with pytest.raises(ValueError, match="last_rank"):
        OsfMethodConfig(first_rank=0.5, last_rank=0.3)


def test_fisher_resumes_after_its_second_task_to_the_uninterrupted_numbers(bench_dir, tmp_path):
    """A resume replays the finished tasks' before_task without their loss; fisher must not need
    it there (the checkpoint holds the scores)."""
    from migu.bench import run, run_config

    def config(out):
        return run_config({"model": "tiny-bert", "method": "finetune+fisher", "output_dir": str(out),
                           "progress": False, "methods": {"fisher": {"fisher_examples": 4}},
                           "data": {"root": str(bench_dir), "order": "tiny", "n_train": 8, "n_test": 4},
                           "train": {"batch_size": 4, "micro_batch_size": 4, "max_length": 24}})  # fmt: skip

    class Stop(Exception):
        pass

    def stop(index, state):
        if index == 1:
            raise Stop

    whole = run(config(tmp_path / "a"))
    with pytest.raises(Stop):
        run(config(tmp_path / "b"), on_task_end=stop)
    resumed = run(config(tmp_path / "b"))
    assert resumed["resumed_at"] == [2] and resumed["accuracy_matrix"] == whole["accuracy_matrix"]


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_osf_evaluates_a_merged_copy_that_computes_the_same(arch):
    """``merged_eval``: evaluation points run a copy with the task's update merged (PEFT's OSF layer
    adds a low-rank product to every forward); the trained wrapping is left exactly as it was."""
    from peft import PeftModel

    from migu.methods.osf import Osf, OsfMethodConfig

    method = Osf()
    plain = build(arch)
    assert method.evaluation_model(plain) is plain  # before the first task: nothing to merge
    model = method.before_task(plain, TaskContext(0, SimpleNamespace(name="t", train=[]), 2, 0, 1))
    trainable = [p for p in model.parameters() if p.requires_grad]
    torch.optim.AdamW(trainable, lr=1e-2).zero_grad()
    model(**batch(arch)).loss.backward()
    torch.optim.AdamW(trainable, lr=1e-2).step()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    evaluated = method.evaluation_model(model)
    assert evaluated is not model and not isinstance(evaluated, PeftModel) and isinstance(model, PeftModel)
    assert not any("osf" in name for name, _ in evaluated.named_modules())
    inputs = batch(arch, seed=1)
    with torch.no_grad():
        assert torch.allclose(evaluated(**inputs).logits, model(**inputs).logits, atol=1e-5)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert Osf(OsfMethodConfig(merged_eval=False)).evaluation_model(model) is model


def test_osf_scores_are_the_same_with_and_without_the_merged_copy(bench_dir, tmp_path, monkeypatch):
    """Through the runner: every evaluation point asks the methods for the model to run, and a
    merged copy evaluates to the scores of the wrapped model."""
    from peft import PeftModel

    from migu.bench import run, run_config
    from migu.methods.osf import Osf

    handed = []  # (asked with the OSF wrapping, handed one back) per evaluation point
    own = Osf.evaluation_model

    def spy(self, model):
        out = own(self, model)
        handed.append((isinstance(model, PeftModel), isinstance(out, PeftModel)))
        return out

    monkeypatch.setattr(Osf, "evaluation_model", spy)

    train = {"lr": 1e-2, "batch_size": 4, "micro_batch_size": 4, "max_length": 24}
    data = {"root": str(bench_dir), "order": "tiny", "n_train": 8, "n_test": 8}

    def scores(merged, out):
        return run(run_config({"model": "tiny-bert", "method": "osf", "output_dir": str(out), "progress": False,
                               "methods": {"osf": {"merged_eval": merged}}, "train": train, "data": data}))  # fmt: skip

    merged = scores(True, tmp_path / "merged")
    points = len(merged["accuracy_matrix"])  # before training and after each task
    assert handed == [(False, False)] + [(True, False)] * (points - 1)
    wrapped = scores(False, tmp_path / "wrapped")
    assert merged["accuracy_matrix"] == wrapped["accuracy_matrix"]
    assert merged["score_matrices"]["macro_f1"] == wrapped["score_matrices"]["macro_f1"]
