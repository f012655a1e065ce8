"""Embedding geometry of the encoder format, a diagnostic: how alike an encoder's sentence
embeddings are on a task (``evaluators: [classification, embedding_geometry]``).

The encoder format scores an option by the cosine of the input's and the label's embeddings, so
when every text gets nearly the same embedding the scores of all options are equal, the loss is
ln(number of options) and its gradient vanishes: the model can no longer learn a new task. Scores
per task:

- ``input_cosine`` (lower is better spread): mean cosine between the embeddings of two different
  evaluation inputs (a pretrained sentence encoder: about 0.3-0.6; collapsed: near 1);
- ``label_cosine`` (lower is better spread): the same between the task's label strings;
- ``option_spread`` (higher is better): mean over inputs of the largest minus the smallest cosine
  to the input's own options (the format multiplies it by its ``scale`` before the softmax).

For n unit vectors with sum s the mean pairwise cosine is (|s|^2 - n) / (n(n - 1)), so no n x n
matrix is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..formats.options import LABEL_MAX_LENGTH
from .base import EvalContext, ScoreSpec, batch_starts, evaluating, gather, register_evaluator, shard


def mean_pairwise_cosine(vectors: torch.Tensor) -> float:
    """Mean cosine over the ordered pairs of different rows of unit-length ``vectors`` (n >= 2)."""
    n = vectors.shape[0]
    if n < 2:
        raise ValueError("mean_pairwise_cosine needs two vectors or more")
    total = vectors.double().sum(0)
    return float((total @ total - n) / (n * (n - 1)))


class EmbeddingGeometry:
    """Mean input-input and label-label cosine, and the spread of an input's option cosines."""

    name = "embedding_geometry"
    per_task = True
    final_only = False

    def specs(self) -> list[ScoreSpec]:
        return [ScoreSpec("input_cosine", False), ScoreSpec("label_cosine", False), ScoreSpec("option_spread", True)]

    def evaluate(self, model: nn.Module, fmt: Any, examples: Sequence[Any] | None, ctx: EvalContext) -> dict[str, Any]:
        if not hasattr(fmt, "embed"):
            raise ValueError(f"evaluator embedding_geometry needs an encoder (the options format that embeds texts); "
                             f"this model's format is {type(fmt).__name__}")  # fmt: skip
        examples = list(examples or [])
        if len(examples) < 2:
            raise ValueError(f"evaluator embedding_geometry needs two examples or more {ctx.desc}".strip())
        labels = sorted({o for e in examples for o in e.options})
        column = {label: i for i, label in enumerate(labels)}
        local = shard(examples, ctx)
        inputs, spreads = [], []
        with evaluating(model, ctx):
            label_vectors = fmt.embed(model, labels, LABEL_MAX_LENGTH)
            for start in batch_starts(len(local), ctx):
                chunk = local[start : start + ctx.batch_size]
                texts = fmt.batch(chunk)["texts"]
                vectors = fmt.embed(model, texts, fmt.max_length)
                cosines = vectors @ label_vectors.t()
                for row, e in enumerate(chunk):
                    mine = cosines[row, [column[o] for o in e.options]]
                    spreads.append(float(mine.max() - mine.min()))
                inputs.append(vectors.cpu())
        parts = gather((torch.cat(inputs) if inputs else torch.zeros(0, label_vectors.shape[1]), spreads), ctx)
        all_inputs = torch.cat([p[0] for p in parts])
        all_spreads = [s for p in parts for s in p[1]]
        return {
            "input_cosine": mean_pairwise_cosine(all_inputs),
            "label_cosine": mean_pairwise_cosine(label_vectors.cpu()),
            "option_spread": sum(all_spreads) / len(all_spreads),
        }


register_evaluator("embedding_geometry", EmbeddingGeometry, kinds=("options",))
