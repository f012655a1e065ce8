"""Accuracy and macro-F1 of predicted labels (exact match after ``normalize_answer``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from ..formats.base import Answers
from ..formats.options import normalize_answer
from .base import EvalContext, ScoreSpec, batch_starts, evaluating, gather, register_evaluator, shard


def macro_f1(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> float:
    """Mean over ``labels`` of each label's F1 (percent); a label that is neither gold nor
    predicted anywhere is left out of the mean (its F1 is undefined)."""
    scores = []
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(gold, predicted, strict=True))
        fp = sum(g != label and p == label for g, p in zip(gold, predicted, strict=True))
        fn = sum(g == label and p != label for g, p in zip(gold, predicted, strict=True))
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return 100.0 * sum(scores) / len(scores) if scores else 0.0


def predictions(model: nn.Module, fmt: Any, examples: Sequence[Any], ctx: EvalContext) -> list[str]:
    """The format's answers, batched by length (less padding)."""
    if not isinstance(fmt, Answers):
        raise ValueError(f"the {type(fmt).__name__} format gives no answers: classification scores options tasks")
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].text))
    answers: list[str] = [""] * len(examples)
    with evaluating(model, ctx):
        for start in batch_starts(len(order), ctx):
            chunk = order[start : start + ctx.batch_size]
            for i, answer in zip(chunk, fmt.predict(model, [examples[i] for i in chunk]), strict=True):
                answers[i] = answer
    return answers


def label_scores(model: nn.Module, fmt: Any, examples: Sequence[Any], ctx: EvalContext) -> dict[str, float]:
    """Accuracy and macro-F1 of the format's answers to ``examples``, sharded over ranks."""
    if not examples:
        raise ValueError(f"no examples to evaluate {ctx.desc}".strip())
    local = shard(examples, ctx)
    pairs = [(normalize_answer(e.label), normalize_answer(a))
             for e, a in zip(local, predictions(model, fmt, local, ctx), strict=True)]  # fmt: skip
    pairs = [p for part in gather(pairs, ctx) for p in part]
    gold, predicted = [g for g, _ in pairs], [p for _, p in pairs]
    labels = sorted({normalize_answer(o) for e in examples for o in e.options})
    return {
        "accuracy": 100.0 * sum(g == p for g, p in pairs) / len(pairs),
        "macro_f1": macro_f1(gold, predicted, labels),
    }


class Classification:
    """Accuracy (percent of exact matches) and macro-F1 over the task's labels."""

    name = "classification"
    per_task = True
    final_only = False

    def specs(self) -> list[ScoreSpec]:
        return [ScoreSpec("accuracy", True), ScoreSpec("macro_f1", True)]

    def evaluate(self, model: nn.Module, fmt: Any, examples: Sequence[Any] | None, ctx: EvalContext) -> dict[str, Any]:
        return label_scores(model, fmt, examples or [], ctx)


register_evaluator("classification", Classification, kinds=("options",))
