"""``answer_share``: how much of a task's evaluation split gets the single most frequent answer.

A model that has fallen back on one label (after forgetting, or with too few steps to learn a
task) shows it here directly: 100 means one answer for every example, 100 / labels an even
spread. Read it beside accuracy: on a two-way task, 50% accuracy with a share of 100 is a
constant answer, not chance-level reading. It is also the smallest complete evaluator: this
file and its registration are all a new score needs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..formats.options import normalize_answer
from .base import EvalContext, ScoreSpec, gather, register_evaluator, shard
from .classification import predictions


class AnswerShare:
    """Percent of examples answered with the most frequent answer (lower: a more varied model)."""

    name = "answer_share"
    per_task = True
    final_only = False

    def specs(self) -> list[ScoreSpec]:
        return [ScoreSpec("answer_share", higher_is_better=False)]

    def evaluate(self, model: nn.Module, fmt: Any, examples: Sequence[Any] | None, ctx: EvalContext) -> dict[str, Any]:
        local = shard(examples or [], ctx)
        answers = [normalize_answer(a) for a in predictions(model, fmt, local, ctx)]
        counts = Counter(a for part in gather(answers, ctx) for a in part)
        total = sum(counts.values())
        if not total:
            raise ValueError(f"no examples to evaluate {ctx.desc}".strip())
        return {"answer_share": 100.0 * counts.most_common(1)[0][1] / total}


register_evaluator("answer_share", AnswerShare, kinds=("options",))
