"""lm-eval's log-likelihoods with each context computed once (``migu.evaluators.lm_eval_shared``)."""

import functools

import pytest
import torch

from migu.models import load_model

pytest.importorskip("lm_eval")

from lm_eval.models.huggingface import HFLM

from migu.evaluators.lm_eval_shared import shared_context_lm


def _requests():
    """Contexts of several lengths, each with answers of several lengths (one token included),
    given in no particular order, and one request longer than the model's context (24)."""
    gen = torch.Generator().manual_seed(0)

    def tokens(n):
        return torch.randint(1000, 5000, (n,), generator=gen).tolist()

    contexts = [tokens(n) for n in (5, 9, 3, 12, 7)]
    requests = []
    for k, context in enumerate(contexts):
        for n in (1, 4, 2, 6)[: 2 + k % 3]:
            requests.append(((f"c{k}", f"a{n}"), context, tokens(n)))
    requests.insert(3, (("long", "x"), tokens(20), tokens(8)))  # 28 tokens: lm-eval cuts it on the left
    return requests[::-1], len(contexts)


@pytest.fixture(scope="module")
def bundle():
    return load_model("tiny-llama", seed=0)


def test_the_same_loglikelihoods_with_each_context_computed_once(bundle, monkeypatch):
    model, tok = bundle.model.eval(), bundle.tokenizer
    requests, contexts = _requests()
    reference = HFLM(pretrained=model, tokenizer=tok, batch_size=3, max_length=24)._loglikelihood_tokens(requests)
    rows = []
    forward = type(model).forward

    @functools.wraps(forward)  # (the same signature: the shared path reads it)
    def counting(self, *args, **kwargs):
        ids = args[0] if args else kwargs["input_ids"]  # (lm-eval passes them positionally)
        rows.append((ids.shape, kwargs.get("attention_mask") is not None))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", counting)
    shared = shared_context_lm(pretrained=model, tokenizer=tok, batch_size=3, max_length=24)
    answers = shared._loglikelihood_tokens(requests)
    assert len(answers) == len(requests)
    for (ll, greedy), (ref_ll, ref_greedy), request in zip(answers, reference, requests, strict=True):
        assert ll == pytest.approx(ref_ll, abs=1e-4), request[0]
        assert greedy == ref_greedy
    first_passes = [shape[0] for shape, masked in rows if not masked]
    assert sum(first_passes) == contexts + 1  # each context once (the long request: lm-eval's own pass)
    assert len({round(ll, 3) for ll, _ in answers}) > len(answers) // 2  # (not all alike)


def test_a_model_without_a_cache_goes_through_lm_evals_own_code(bundle):
    model, tok = bundle.model.eval(), bundle.tokenizer
    requests, _ = _requests()

    class NoCache(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.config = model, model.config
            self.device, self.dtype = model.device, model.dtype

        def forward(self, input_ids=None, attention_mask=None):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

        def tie_weights(self):
            pass

    reference = HFLM(pretrained=model, tokenizer=tok, batch_size=3, max_length=24)._loglikelihood_tokens(requests)
    plain = shared_context_lm(pretrained=NoCache(), tokenizer=tok, batch_size=3, max_length=24)
    assert plain._loglikelihood_tokens(requests) == reference
