"""Held-out language-modelling loss and perplexity (token-weighted, over the whole split)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..formats.base import TokenLoss
from .base import EvalContext, ScoreSpec, batch_starts, evaluating, gather, register_evaluator, shard


def token_loss_sum(model: nn.Module, fmt: Any, examples: Sequence[Any], ctx: EvalContext) -> tuple[float, int]:
    """Summed token loss and token count of ``examples`` under ``fmt.token_loss``; batched by
    length where the format gives each example's length alone (``eval_length``: a format whose
    rows do not depend on their batch mates)."""
    if not isinstance(fmt, TokenLoss):
        raise ValueError(f"the {type(fmt).__name__} format has no token loss: lm_loss scores corpus or instruction "
                         "tasks")  # fmt: skip
    length = getattr(fmt, "eval_length", None)
    if callable(length):  # batches of examples of similar lengths: less padding to compute
        examples = sorted(examples, key=length)
    total, count = 0.0, 0
    with evaluating(model, ctx):
        for start in batch_starts(len(examples), ctx):
            loss, tokens = fmt.token_loss(model, fmt.batch(list(examples[start : start + ctx.batch_size])))
            total += float(loss)
            count += int(tokens)
    return total, count


class LmLoss:
    """Mean loss per predicted token on the evaluation split, and its exponential (perplexity)."""

    name = "lm_loss"
    per_task = True
    final_only = False

    def specs(self) -> list[ScoreSpec]:
        return [ScoreSpec("loss", False), ScoreSpec("perplexity", False)]

    def evaluate(self, model: nn.Module, fmt: Any, examples: Sequence[Any] | None, ctx: EvalContext) -> dict[str, Any]:
        if not examples:
            raise ValueError(f"no examples to evaluate {ctx.desc}".strip())
        parts = gather(token_loss_sum(model, fmt, shard(examples, ctx), ctx), ctx)
        total, count = sum(p[0] for p in parts), sum(p[1] for p in parts)
        if count == 0:
            raise ValueError(f"no token to score in {ctx.desc or 'the evaluation split'}")
        loss = total / count
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}


register_evaluator("lm_loss", LmLoss, kinds=("corpus", "instruction"))
