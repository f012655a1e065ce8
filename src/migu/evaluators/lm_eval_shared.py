"""lm-eval's log-likelihood requests with each context computed once.

A multiple-choice document asks lm-eval for the log-likelihood of each answer after the same
context (HellaSwag: four endings after one passage; ARC: four or five answers after one
question). lm-eval's ``HFLM`` runs every (context, answer) pair through the model whole, so the
context is computed once per answer. ``SharedContextLM`` keeps HFLM's tokenization, requests and
results, and computes them in two passes: the distinct contexts of a batch once (right-padded,
without a mask, as HFLM pads its inputs), keeping their attention cache and the logits of each
context's last token; then every answer of those contexts from a copy of its context's cache
(the padding masked, positions continuing the context). The log-probabilities are those of the
single pass up to floating-point rounding; the vocabulary projection runs only where a score
needs it. Requests too long for the model, an ``auto`` batch size and models that take no cache
go through HFLM's own code.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from ..formats.generation import forward_parameters

Request = tuple[tuple[str, str], list[int], list[int]]


def shared_context_lm(**kwargs: Any) -> Any:
    """An lm-eval ``HFLM`` (``kwargs`` as HFLM takes them) whose log-likelihoods compute each
    context once (see the module docstring)."""
    from lm_eval.models.huggingface import HFLM

    class SharedContextLM(HFLM):  # type: ignore[misc]
        def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False,
                                  override_bs: int | None = None) -> list[tuple[float, bool]]:  # fmt: skip
            if not _can_share(self):
                return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
            fits = [i for i, (_, ctx, cont) in enumerate(requests) if len(ctx) + len(cont) <= self.max_length + 1]
            out: list[Any] = [None] * len(requests)
            for i, answer in zip(fits, _shared(self, [requests[i] for i in fits]), strict=True):
                out[i] = answer
            rest = [i for i in range(len(requests)) if out[i] is None]
            if rest:
                answers = super()._loglikelihood_tokens([requests[i] for i in rest], True, override_bs)
                for i, answer in zip(rest, answers, strict=True):
                    out[i] = answer
            return out

    return SharedContextLM(**kwargs)


def _can_share(lm: Any) -> bool:
    params = forward_parameters(lm.model)
    return (lm.backend == "causal" and isinstance(lm.batch_size, int) and {"logits_to_keep", "position_ids"} <= params
            and bool({"cache", "past_key_values"} & params))  # fmt: skip


def _shared(lm: Any, requests: list[Request]) -> list[tuple[float, bool]]:
    """(log-likelihood, greedy) of each request, contexts batched ``lm.batch_size`` at a time."""
    by_context: dict[tuple[int, ...], list[int]] = {}
    for i, (_, ctx, _cont) in enumerate(requests):
        by_context.setdefault(tuple(ctx), []).append(i)
    contexts = sorted(by_context, key=lambda c: (-len(c), c))
    out: list[Any] = [None] * len(requests)
    autocast = torch.autocast(device_type=lm.device.type, dtype=lm.mixed_precision_dtype,
                              enabled=lm.mixed_precision_dtype is not None)  # fmt: skip
    with torch.no_grad(), autocast:
        for start in range(0, len(contexts), lm.batch_size):
            group = contexts[start : start + lm.batch_size]
            members = [(row, i) for row, ctx in enumerate(group) for i in by_context[ctx]]
            members.sort(key=lambda m: -len(requests[m[1]][2]))  # (answers of similar lengths: less padding)
            for (_, i), answer in zip(members, _score_group(lm, group, members, requests), strict=True):
                out[i] = answer
                if requests[i][0] is not None:
                    lm.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
    return out


def _cache_kwargs(lm: Any, cache: Any) -> dict[str, Any]:
    return {"cache" if "cache" in forward_parameters(lm.model) else "past_key_values": cache, "use_cache": True}


def _score_group(lm: Any, group: list[tuple[int, ...]], members: list[tuple[int, int]],
                 requests: list[Request]) -> list[tuple[float, bool]]:  # fmt: skip
    from transformers import DynamicCache

    model, device = lm.model, lm.device
    width = len(group[0])  # (sorted longest first)
    ids = torch.zeros((len(group), width), dtype=torch.long, device=device)  # right-padded with 0, as HFLM
    for row, ctx in enumerate(group):
        ids[row, : len(ctx)] = torch.tensor(ctx, dtype=torch.long)
    ends = sorted({len(ctx) - 1 for ctx in group})
    cache = DynamicCache(config=model.config)
    logits = model(input_ids=ids, logits_to_keep=torch.tensor(ends, device=device), **_cache_kwargs(lm, cache)).logits
    first = torch.stack([logits[row, ends.index(len(ctx) - 1)] for row, ctx in enumerate(group)])
    first = F.log_softmax(first, dim=-1, dtype=lm.softmax_dtype)
    lengths = torch.tensor([len(c) for c in group], device=device)
    context_mask = (torch.arange(width, device=device)[None, :] < lengths[:, None]).long()
    out = []
    for start in range(0, len(members), lm.batch_size):
        chunk = members[start : start + lm.batch_size]
        rest = _continuations(lm, cache, context_mask, group, chunk, requests, first.shape[-1])
        for k, (row, i) in enumerate(chunk):
            cont = requests[i][2]
            scores = torch.cat([first[row : row + 1], rest[k][: len(cont) - 1]])  # [len(cont), vocab]
            wanted = torch.tensor(cont, dtype=torch.long, device=device)
            greedy = bool((scores.argmax(dim=-1) == wanted).all())
            chosen = torch.gather(scores[None], 2, wanted[None, :, None]).squeeze(-1)  # [1, len(cont)]
            out.append((float(chosen.sum()), greedy))
    return out


def _continuations(lm: Any, cache: Any, context_mask: torch.Tensor, group: list[tuple[int, ...]],
                   chunk: list[tuple[int, int]], requests: list[Request], vocab: int) -> torch.Tensor:  # fmt: skip
    """Log-probabilities after each token of each answer but its last (``[rows, longest - 1,
    vocab]``), each answer read after its context's cache."""
    device = context_mask.device
    longest = max(len(requests[i][2]) for _, i in chunk) - 1
    if longest == 0:  # one-token answers: the context's last logits are all there is
        return torch.empty((len(chunk), 0, vocab), device=device)
    ids = torch.zeros((len(chunk), longest), dtype=torch.long, device=device)
    mask = torch.zeros((len(chunk), longest), dtype=torch.long, device=device)
    for k, (_, i) in enumerate(chunk):
        cont = requests[i][2][:-1]
        ids[k, : len(cont)] = torch.tensor(cont, dtype=torch.long)
        mask[k, : len(cont)] = 1
    rows = torch.tensor([row for row, _ in chunk], device=device)
    own = copy.deepcopy(cache)
    own.batch_select_indices(rows)
    starts = torch.tensor([len(group[row]) for row, _ in chunk], device=device)
    positions = starts[:, None] + torch.arange(longest, device=device)[None, :]
    logits = lm.model(input_ids=ids, attention_mask=torch.cat([context_mask[rows], mask], dim=1),
                      position_ids=positions, **_cache_kwargs(lm, own)).logits  # fmt: skip
    return F.log_softmax(logits, dim=-1, dtype=lm.softmax_dtype)
