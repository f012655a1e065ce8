"""The decoder formats compute logits only where their loss reads them (``migu.formats.causal``):
the same loss, gradients and MIGU statistic as the whole-sequence logits (the Hugging Face loss),
for full finetuning and LoRA, tied and untied heads; the output head's statistic (a MIGU target
only with ``include_lm_head``) counts the positions the loss reads."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

import migu
from migu.data import Example
from migu.data.tasks import InstructionExample, TextExample
from migu.formats import make_format
from migu.formats.causal import label_log_likelihoods, label_logits, predicting
from migu.models import load_model

OPTIONS = ("cats", "dogs")


def _examples(kind):
    if kind == "options":  # prompts of different lengths, answers of one or two tokens and EOS
        return [Example(f"text {i} " + "about a topic " * i, OPTIONS[i % 2], OPTIONS, "Topic?", "t") for i in range(4)]
    if kind == "instruction":
        return [InstructionExample("add two numbers " * (1 + i), "def add(a, b): return a + b" * (i % 2 + 1), "c")
                for i in range(3)]  # fmt: skip
    return [TextExample("a short row"), TextExample("a much longer row of text to model " * 2)]


def _setup(kind, tied=False, lora=False):
    """A tiny random Llama, a batch of the format with padding, and the format."""
    bundle = load_model("tiny-llama", seed=0)
    model = bundle.model
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    else:
        assert model.lm_head.weight is not model.model.embed_tokens.weight
    if lora:
        config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        model = get_peft_model(model, config)
    fmt = make_format("decoder", bundle.tokenizer, 48, kind=kind)
    batch = fmt.batch(_examples(kind))
    assert (batch["attention_mask"] == 0).any()  # padding, and (options, instruction) unlabelled prompts
    return model.train(), fmt, batch


def _hf_loss(model, batch):
    """Before: the Hugging Face loss of the whole-sequence logits (labels -100 at padding, and at
    the prompt of options and instruction batches)."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


def _head_rows(model):
    """Rows the output head is applied to during the next calls (a hook of the test's own)."""
    seen = []
    head = model.get_output_embeddings()
    return seen, head.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[:-1].numel()))


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("kind", ["options", "instruction", "corpus"])
def test_same_loss_and_gradients_as_the_whole_sequence_logits(kind, tied, lora):
    model, fmt, batch = _setup(kind, tied, lora)
    before = copy.deepcopy(model)
    seen, hook = _head_rows(model)
    loss = fmt.loss(model, batch)
    hook.remove()
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert seen == [labelled] and labelled < batch["input_ids"].numel()  # the head saw those positions only
    reference = _hf_loss(before, batch)
    assert torch.allclose(loss, reference, rtol=1e-6, atol=1e-6)
    loss.backward()
    reference.backward()
    grads = [(n, p.grad, q.grad) for (n, p), (_, q) in zip(model.named_parameters(), before.named_parameters(),
                                                           strict=True) if p.requires_grad]  # fmt: skip
    assert grads and all(g is not None for _, g, _ in grads)
    for name, new, old in grads:
        assert torch.allclose(new, old, rtol=1e-4, atol=1e-7), name


def test_logits_are_the_whole_sequence_logits_at_the_predicting_positions():
    model, _, batch = _setup("options")
    model.eval()
    with torch.no_grad():
        logits, targets = label_logits(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    keep = predicting(batch["labels"])
    assert keep[:, -1].logical_not().all() and keep.sum() == logits.shape[0] == targets.shape[0]
    assert torch.allclose(logits, full[keep], atol=1e-5)
    assert targets.tolist() == batch["labels"][:, 1:][keep[:, :-1]].tolist()
    # per row, the summed log-likelihood of its answer, as the ranking evaluation reads it
    logp = torch.log_softmax(full[:, :-1], -1).gather(2, batch["labels"][:, 1:].clamp(min=0)[..., None])[..., 0]
    by_hand = (logp * (batch["labels"][:, 1:] != -100)).sum(1)
    with torch.no_grad():
        assert torch.allclose(label_log_likelihoods(model, batch), by_hand, atol=1e-5)


def test_the_hook_is_gone_after_the_call_even_when_the_model_raises():
    model, fmt, batch = _setup("options")
    head = model.get_output_embeddings()
    fmt.loss(model, batch)
    assert not head._forward_pre_hooks
    bad = {**batch, "input_ids": batch["input_ids"] + 10**6}  # out of the vocabulary: the embedding raises
    with pytest.raises(IndexError):
        fmt.loss(model, bad)
    assert not head._forward_pre_hooks


def test_a_model_without_an_output_embedding_gets_its_logits_gathered():
    """A head not reached through ``get_output_embeddings`` still gives the same loss (no saving)."""
    model, fmt, batch = _setup("instruction")
    reference = _hf_loss(model, batch)
    seen, hook = _head_rows(model)
    model.get_output_embeddings = lambda: None  # an instance attribute: the class is untouched
    loss = fmt.loss(model, batch)
    hook.remove()
    assert seen == [batch["input_ids"].numel()]
    assert torch.allclose(loss, reference, rtol=1e-6, atol=1e-6)


def _migu_step(model, loss_of, **settings):
    handle = migu.attach(model, threshold=0.7, **settings)
    loss_of(model).backward()
    stats = {n: s.clone() for n, s in handle.statistics().items()}
    handle.before_optimizer_step()
    kept = {n: r.kept_rows.sort().values for n, r in handle.report().items()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    handle.remove()
    return stats, kept, grads


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("ignore_padding", [False, True])
def test_migu_keeps_the_same_rows_with_the_same_statistic(ignore_padding, fast, lora):
    model, fmt, batch = _setup("options", tied=True, lora=lora)
    settings = {"ignore_padding": ignore_padding, "micro_batches_per_step": 1 if fast else None}
    new = _migu_step(model, lambda m: fmt.loss(m, batch), **settings)
    old = _migu_step(copy.deepcopy(model), lambda m: _hf_loss(m, batch), **settings)
    assert new[0].keys() == old[0].keys() and "lm_head" not in new[0]
    for name in old[0]:
        assert torch.equal(new[0][name], old[0][name]), name  # the blocks ran the same forward
        assert torch.equal(new[1][name], old[1][name]), name
    for name in old[2]:
        assert torch.allclose(new[2][name], old[2][name], rtol=1e-4, atol=1e-7), name


@pytest.mark.parametrize("tied", [False, True])
def test_the_output_heads_statistic_counts_the_positions_the_loss_reads(tied):
    """With ``include_lm_head`` the head's statistic is |logits| summed over the labelled positions
    (before: over every real token with ``ignore_padding``); every other layer's is unchanged."""
    model, fmt, batch = _setup("options", tied=tied)
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.abs()
    labelled = full[predicting(batch["labels"])].sum(0)
    real = full[batch["attention_mask"].bool()].sum(0)
    settings = {"include_lm_head": True, "ignore_padding": True}
    new = _migu_step(model, lambda m: fmt.loss(m, batch), **settings)
    old = _migu_step(copy.deepcopy(model), lambda m: _hf_loss(m, batch), **settings)
    assert torch.allclose(new[0]["lm_head"], labelled, rtol=1e-5)
    assert torch.allclose(old[0]["lm_head"], real, rtol=1e-5)
    assert not torch.allclose(labelled, real, rtol=1e-2)  # the prompt tokens are no longer counted
    stat = new[0]["lm_head"].double()
    assert new[1]["lm_head"].tolist() == (stat >= torch.quantile(stat, 0.7)).nonzero().flatten().tolist()
    for name in old[0]:
        if name != "lm_head":
            assert torch.equal(new[0][name], old[0][name]) and torch.equal(new[1][name], old[1][name]), name
