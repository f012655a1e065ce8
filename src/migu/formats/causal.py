"""A causal LM's logits only at the positions a loss reads: the decoder formats' losses and scores.

A decoder format's loss reads the logits of the positions whose next token is a label (not -100):
the answer tokens of an options task, the response of an instruction pair, every real token but
the first of a corpus row. The output head is the largest layer of a small decoder (SmolLM2:
576 -> 49,152 per position, the multiply-adds of 8 of its 30 blocks), and its logits
([batch, sequence, vocabulary], in fp32 for the loss) the largest tensor of a step; computed at
every position, most were thrown away (16 dbpedia examples padded to 160 tokens: 42 of 2,560 read).

``label_logits`` calls the model as a training step always did (the root model, with
``input_ids`` and ``attention_mask``; no ``labels``, so the model computes no loss of its own),
with a forward pre-hook on its output embedding (``get_output_embeddings()``) for the length of
the call that hands the head the hidden states of those positions only, ``[N, hidden]`` in
row-major order, so that it returns logits ``[N, vocabulary]``. This is what transformers'
``logits_to_keep=<boolean [batch, sequence] mask>`` does in recent releases; migu supports 5.0,
whose models read only an int or a 1D tensor there, and the hook works the same on any version
and model. The root model is called, not its inner decoder (``model.model``): MIGU's
``ignore_padding`` reads the ``attention_mask`` keyword of the root call, and a DDP or FSDP wrapper
must run its own forward. A model whose head is not reached that way returns the logits of every
position, which are gathered afterwards: the same result, without the saving.

MIGU. The blocks run the same forward on the same tokens as before, so every hidden layer's
statistic and kept rows are unchanged. The output head is a MIGU target only with
``include_lm_head=True``; it then sees the N positions the loss reads, and its statistic counts
exactly those (before: every real token with ``ignore_padding``, every position, padding included,
without). The positions whose logits no loss reads contribute nothing to the head's gradient, so
the statistic now ranks the head's rows by the tokens that train it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Batch, unwrap

IGNORE = -100


def predicting(labels: torch.Tensor) -> torch.Tensor:
    """Boolean [batch, sequence]: the positions whose next token is a label (not -100)."""
    keep = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    keep[:, :-1] = labels[:, 1:] != IGNORE
    return keep


def _output_head(model: nn.Module) -> nn.Module | None:
    get = getattr(unwrap(model), "get_output_embeddings", None)
    if not callable(get):
        return None
    try:
        head = get()
    except (AttributeError, NotImplementedError):
        return None
    return head if isinstance(head, nn.Module) else None


def _gather_hook(keep: torch.Tensor) -> Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...] | None]:
    def gather(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        hidden = args[0] if args else None
        if not isinstance(hidden, torch.Tensor) or tuple(hidden.shape[:-1]) != tuple(keep.shape):
            return None  # not the hidden states of this call's tokens: leave the head's input as it is
        return (hidden[keep], *args[1:])

    return gather


def label_logits(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [N, vocabulary], their labels [N]) at the N positions whose next token is a label,
    row-major, computed there only (the module docstring)."""
    device = next(model.parameters()).device
    keep = predicting(labels.to(device))
    targets = labels.to(device)[:, 1:][keep[:, :-1]]
    head = _output_head(model)
    hook = head.register_forward_pre_hook(_gather_hook(keep)) if head is not None else None
    try:
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
    finally:
        if hook is not None:
            hook.remove()
    if logits.dim() == 3 and tuple(logits.shape[:2]) == tuple(keep.shape):
        logits = logits[keep]  # the head saw every position (not reached through the hook)
    if logits.dim() != 2 or logits.shape[0] != targets.shape[0]:
        raise RuntimeError(
            f"{type(unwrap(model)).__name__} returned logits of shape {tuple(logits.shape)} for {len(targets)} "
            f"labelled positions of a {tuple(keep.shape)} batch: its output head is called in a way migu does "
            "not know"
        )
    return logits, targets


def label_losses(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Next-token cross-entropy (fp32) of each labelled position of a batch with ``input_ids``,
    ``attention_mask`` and ``labels``: [N], row-major. Its mean is the Hugging Face causal LM loss
    (``model(**batch).loss``)."""
    logits, targets = label_logits(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    return F.cross_entropy(logits.float(), targets, reduction="none")


def label_log_likelihoods(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Per row of the batch, the summed log-probability of its labelled tokens: [batch] (fp32)."""
    losses = label_losses(model, batch)
    rows = predicting(batch["labels"]).nonzero()[:, 0].to(losses.device)
    return torch.zeros(len(batch["labels"]), device=losses.device).index_add_(0, rows, -losses)
