"""The instruction format: loss on exactly the response tokens, chat templates, truncation."""

import copy

import pytest
import torch
import torch.nn.functional as F

from migu.data.tasks import InstructionExample
from migu.evaluators import EvalContext, build_evaluators
from migu.formats import make_format
from migu.formats.instruct import PLAIN_TEMPLATE, InstructionFormat
from migu.models import load_model

CHAT = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}")  # fmt: skip


@pytest.fixture(scope="module")
def bundle():
    return load_model("tiny-llama", seed=0)


def examples():
    return [
        InstructionExample("add two numbers", "def add(a, b): return a + b", "code"),
        InstructionExample("say hello to the whole wide world please", "hello world", "code"),
    ]


def response_positions(batch):
    return [row.nonzero().flatten().tolist() for row in batch["labels"] != -100]


def test_plain_template_labels_cover_exactly_the_response(bundle):
    tok = bundle.tokenizer
    fmt = make_format("decoder", tok, 128, kind="instruction")
    assert isinstance(fmt, InstructionFormat) and not fmt.use_chat  # the MiniLM tokenizer has no chat template
    batch = fmt.batch(examples())
    for row, e in enumerate(examples()):
        prompt = tok(PLAIN_TEMPLATE.format(prompt=e.prompt))["input_ids"]
        response = tok(e.response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = len(prompt) + len(response)
        assert batch["input_ids"][row, :n].tolist() == prompt + response
        assert response_positions(batch)[row] == list(range(len(prompt), n))
        assert batch["labels"][row, len(prompt) : n].tolist() == response
        assert batch["attention_mask"][row].sum() == n
        assert tok.decode(batch["labels"][row, len(prompt) : n - 1]) == tok.decode(response[:-1])


def test_chat_template_prompt_ends_at_the_assistant_header(bundle):
    tok = copy.deepcopy(bundle.tokenizer)
    tok.chat_template = CHAT
    fmt = InstructionFormat(tok, 128)
    assert fmt.use_chat
    e = examples()[1]
    prompt, response = fmt.encode(e)
    assert tok.decode(prompt).replace(" ", "").endswith("<assistant>")
    text = tok.decode(response).replace(" ", "")
    assert text == "helloworld</s>"  # the response and the template's end-of-turn, nothing of the prompt
    batch = fmt.batch([e])
    assert response_positions(batch)[0] == list(range(len(prompt), len(prompt) + len(response)))
    plain = InstructionFormat(tok, 128, chat_template=False)
    assert not plain.use_chat


def test_token_loss_is_the_summed_loss_of_the_response_tokens(bundle):
    model, tok = bundle.model.eval(), bundle.tokenizer
    fmt = InstructionFormat(tok, 128)
    batch = fmt.batch(examples())
    total, count = fmt.token_loss(model, batch)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    by_hand, n = 0.0, 0
    for row, positions in enumerate(response_positions(batch)):
        for p in positions:  # token p is predicted from position p - 1
            by_hand -= F.log_softmax(logits[row, p - 1], -1)[batch["input_ids"][row, p]].item()
            n += 1
    assert count == n == sum(len(fmt.encode(e)[1]) for e in examples())
    assert float(total.detach()) == pytest.approx(by_hand, rel=1e-5)
    assert float(fmt.loss(model, batch).detach()) == pytest.approx(by_hand / n, rel=1e-5)  # the training loss: the mean


def test_truncation_keeps_the_response_and_the_prompt_end(bundle):
    tok = bundle.tokenizer
    long = InstructionExample("word " * 80 + "END", "short answer", "code")
    fmt = InstructionFormat(tok, 24)
    prompt, response = fmt.encode(long)
    batch = fmt.batch([long])
    assert batch["input_ids"].shape[1] == 24
    assert batch["labels"][0, -len(response) :].tolist() == response
    kept = batch["input_ids"][0, : 24 - len(response)].tolist()
    assert kept == prompt[len(prompt) - len(kept) :]  # the prompt's end: the question's end and the response cue
    huge = InstructionExample("q", "many words " * 60, "code")
    cut = fmt.batch([huge])
    assert cut["input_ids"].shape[1] == 24 and int((cut["labels"] != -100).sum()) >= 24 - 16


def test_lm_loss_evaluator_and_generation(bundle):
    model, tok = bundle.model, bundle.tokenizer
    fmt = InstructionFormat(tok, 128)
    (lm_loss,) = build_evaluators(None, "instruction")
    scores = lm_loss.evaluate(model, fmt, examples(), EvalContext(batch_size=1))
    total, count = fmt.token_loss(model.eval(), fmt.batch(examples()))
    assert scores["loss"] == pytest.approx(float(total.detach()) / count, rel=1e-5)  # token-weighted
    out = fmt.generate(model, examples(), max_new_tokens=6)
    assert len(out) == 2 and all(isinstance(o, str) for o in out)
    first = fmt.generate(model, examples(), max_new_tokens=6, stop=lambda text: True)  # each row ends after a token
    assert all(len(tok(f, add_special_tokens=False)["input_ids"]) <= 1 for f in first)
    assert all(o.startswith(f) for o, f in zip(out, first, strict=True))  # greedy: the same first token
