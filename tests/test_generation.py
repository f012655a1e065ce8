"""Greedy decoding with rows that end on their own (``migu.formats.generation``): the tokens of
Transformers' ``generate``, finished rows leaving the batch, the instruction format's stop."""

from types import SimpleNamespace

import pytest
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from migu.data.tasks import InstructionExample
from migu.evaluators.code_exec import has_code_block
from migu.formats import make_format
from migu.formats.generation import greedy, plain_greedy
from migu.models import load_model


class WordStop(StoppingCriteria):
    """Row i ends once its new text has ``3 + i`` words (rows end at different steps)."""

    def __init__(self, tokenizer, start):
        self.tokenizer, self.start = tokenizer, start

    def __call__(self, input_ids, scores, **kwargs):
        texts = self.tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
        return torch.tensor([len(t.split()) >= 3 + i for i, t in enumerate(texts)])


def _batch(tokenizer, lengths):
    rows = [list(range(1000 + 7 * n, 1000 + 8 * n)) for n in lengths]
    width = max(map(len, rows))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def _generated(tokenizer, out, width):
    """Each row of ``generate``'s output up to where it pads that row (its eos included)."""
    rows = []
    for row in out[:, width:].tolist():
        end = next((i + 1 for i, t in enumerate(row) if t == tokenizer.eos_token_id), len(row))
        rows.append(row[:end])
    return rows


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("lengths", [[5, 9, 3, 7], [6, 6]])
def test_greedy_gives_the_tokens_of_generate(name, lengths):
    bundle = load_model(name, seed=0)
    model, tok = bundle.model.eval(), bundle.tokenizer
    assert plain_greedy(model)
    ids, mask = _batch(tok, lengths)
    width = ids.shape[1]
    with torch.no_grad():
        plain = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12,
                               pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
        stopped = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                 stopping_criteria=StoppingCriteriaList([WordStop(tok, width)]))  # fmt: skip
    assert greedy(model, ids, mask, 12, tok.eos_token_id) == _generated(tok, plain, width)
    calls = []

    def done(row, tokens):
        calls.append((row, len(tokens)))
        return len(tok.decode(tokens, skip_special_tokens=True).split()) >= 3 + row

    rows = greedy(model, ids, mask, 12, tok.eos_token_id, done)
    expected = _generated(tok, stopped, width)
    # generate pads a finished row to the batch's end; greedy ends it there
    assert rows == [[t for t in r if t != tok.pad_token_id] for r in expected]
    for row, tokens in enumerate(rows):  # a finished row was asked no more, and left the batch
        assert max(n for r, n in calls if r == row) == len(tokens)
    if len({len(r) for r in rows}) > 1:
        assert len(calls) < len(rows) * max(len(r) for r in rows)


def test_a_finished_row_leaves_the_batch(monkeypatch):
    """The forward passes after a row ends carry the other rows only."""
    bundle = load_model("tiny-llama", seed=0)
    model, tok = bundle.model.eval(), bundle.tokenizer
    ids, mask = _batch(tok, [4, 8, 6])
    sizes = []
    forward = type(model).forward

    def counting(self, *args, **kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", counting)
    rows = greedy(model, ids, mask, 10, None, lambda row, tokens: len(tokens) == 2 + 3 * row)
    assert [len(r) for r in rows] == [2, 5, 8]
    assert sizes == [3, 3, 2, 2, 2, 1, 1, 1]  # the prompt's forward, then one per new token


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """The packaged SmolLM2's tokenizer (byte-level: it keeps newlines and backticks)."""
    from transformers import AutoTokenizer

    from migu.models.loading import smollm2_path

    try:
        return AutoTokenizer.from_pretrained(smollm2_path())
    except (ModuleNotFoundError, OSError) as err:  # (the packaged model is an optional extra)
        pytest.skip(f"no packaged SmolLM2: {err}")


def test_the_instruction_format_stops_each_row_at_its_first_code_block(smollm2_tokenizer):
    """A row ends at the token that closes its first code block, whatever the other rows do; its
    text goes no further, and the other row goes on alone."""
    tok = smollm2_tokenizer
    fmt = make_format("decoder", tok, 64, kind="instruction")
    script = ["Here:\n```python\ndef f():\n    return 1\n```\nThat is all, and more ```python\ndef g(): pass\n```",
              "Some prose without code, " * 20]  # fmt: skip
    planned = [tok(s, add_special_tokens=False)["input_ids"] for s in script]
    model = Scripted(planned, len(tok))
    examples = [InstructionExample("write f", "", "code"), InstructionExample("talk", "", "code")]
    texts = fmt.generate(model, examples, max_new_tokens=40, stop=has_code_block)
    first_block = script[0][: script[0].index("```\nThat") + 3]
    assert texts[0] == first_block and has_code_block(texts[0])
    ends = next(n for n in range(1, len(planned[0])) if has_code_block(tok.decode(planned[0][:n])))
    assert model.rows_per_step == [2] * ends + [1] * (40 - ends)  # then the prose row alone, to its limit
    assert texts[1] == tok.decode(planned[1][:40])


class Scripted(torch.nn.Module):
    """A decoder whose rows say planned tokens (the cache is left empty): where does generation stop?"""

    def __init__(self, planned, vocab):
        super().__init__()
        from transformers import GenerationConfig, LlamaConfig

        self.planned, self.vocab, self.rows_per_step = planned, vocab, []
        self.config = LlamaConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, vocab_size=vocab)
        self.generation_config = GenerationConfig()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, use_cache=None,
                logits_to_keep=None, past_key_values=None):  # fmt: skip
        batch, step = input_ids.shape[0], len(self.rows_per_step)
        self.rows_per_step.append(batch)
        rows = range(len(self.planned))[len(self.planned) - batch :]  # (here the first rows end first)
        logits = torch.zeros(batch, 1, self.vocab)
        for j, row in enumerate(rows):
            plan = self.planned[row]
            logits[j, -1, plan[min(step, len(plan) - 1)]] = 1.0
        return SimpleNamespace(logits=logits)
