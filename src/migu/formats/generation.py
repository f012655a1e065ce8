"""Greedy decoding in which each row stops on its own and a finished row leaves the batch.

Transformers' ``generate`` keeps every row of a batch until the last one ends: with a stop such as
"a complete code block" most rows of an evaluation batch end after tens of tokens, while the
batch goes on computing (and padding) them until its longest row reaches ``max_new_tokens``.
``greedy`` does what ``generate(do_sample=False)`` does for a decoder (the prompt's forward with
the same position ids, mask and cache, then one token per step, the argmax of the last position's
logits in float32), row by row, and drops a row's cache as soon as it ends: on its end-of-sequence
token, or when ``done(row, tokens)`` says so. Each row's tokens are those ``generate`` gives up
to where it would pad that row. ``plain_greedy`` says whether a model's generation settings ask
for nothing more (logits processors, other caches); where they do, callers use ``generate``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

_PROCESSORS = ("repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size", "bad_words_ids",
               "min_length", "min_new_tokens", "suppress_tokens", "begin_suppress_tokens", "forced_bos_token_id",
               "forced_eos_token_id", "sequence_bias", "exponential_decay_length_penalty", "guidance_scale",
               "renormalize_logits", "cache_implementation", "prefill_chunk_size", "watermarking_config")  # fmt: skip
"""Generation settings that make ``generate`` do more than plain greedy decoding with a dynamic cache."""

Done = Callable[[int, list[int]], bool]


def forward_parameters(model: Any) -> set[str]:
    """The keyword arguments the model's ``forward`` names (a DDP wrapper's and a PEFT model's
    are those of the model inside, to which they pass them on)."""
    model = getattr(model, "module", model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(base.forward).parameters)


def plain_greedy(model: Any) -> bool:
    """Whether ``greedy`` decodes ``model`` as ``generate(do_sample=False)`` does: a decoder that
    takes a cache, whose generation settings add no logits processor, and no other cache."""
    from transformers import GenerationConfig

    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    params = forward_parameters(model)
    if not {"cache", "past_key_values"} & params or "attention_mask" not in params:
        return False
    settings, default = getattr(model, "generation_config", None) or GenerationConfig(), GenerationConfig()
    return all(getattr(settings, name, None) in (None, getattr(default, name, None)) for name in _PROCESSORS)


@torch.no_grad()
def greedy(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
           eos_token_id: int | None, done: Done | None = None) -> list[list[int]]:  # fmt: skip
    """The greedy continuation of each row of the left-padded ``input_ids`` (at most
    ``max_new_tokens`` tokens, its end-of-sequence token included), rows leaving the batch as they
    end (see the module docstring). ``done(row, tokens so far)``: whether that row is complete.
    ``model``: a decoder (``nn.Module``) for which ``plain_greedy`` holds."""
    from transformers import DynamicCache

    params = forward_parameters(model)
    cache = DynamicCache(config=model.config)
    fixed: dict[str, Any] = {"cache" if "cache" in params else "past_key_values": cache, "use_cache": True}
    if "logits_to_keep" in params:
        fixed["logits_to_keep"] = 1
    mask = attention_mask.long()
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0) if "position_ids" in params else None
    # (as ``generate``: no mask where nothing is padded; the model's causal mask is the same)
    mask_or_none: torch.Tensor | None = None if bool((mask == 1).all()) else mask
    rows = list(range(input_ids.shape[0]))
    out: list[list[int]] = [[] for _ in rows]
    step_ids = input_ids
    for step in range(max_new_tokens):
        extra = {} if positions is None else {"position_ids": positions}
        logits = model(input_ids=step_ids, attention_mask=mask_or_none, **extra, **fixed).logits
        chosen = logits[:, -1].to(dtype=torch.float32).argmax(-1)
        keep = []
        for j, row in enumerate(rows):
            out[row].append(int(chosen[j]))
            if out[row][-1] != eos_token_id and not (done is not None and done(row, out[row])):
                keep.append(j)
        if not keep or step + 1 == max_new_tokens:
            break
        if len(keep) < len(rows):  # finished rows leave the batch, their cache with them
            index = torch.tensor(keep, device=chosen.device)
            cache.batch_select_indices(index)
            chosen = chosen[index]
            positions = positions[index] if positions is not None else None
            mask_or_none = mask_or_none[index] if mask_or_none is not None else None
            rows = [rows[j] for j in keep]
        step_ids = chosen[:, None]
        positions = positions[:, -1:] + 1 if positions is not None else None
        if mask_or_none is not None:
            mask_or_none = torch.cat([mask_or_none, mask_or_none.new_ones((len(rows), 1))], dim=1)
    return out
