"""Accuracy of a model on a task's examples: exact match of the predicted label."""

from __future__ import annotations

from torch import nn

from ..data.tasks import Example
from .formats import Format


def accuracy(
    model: nn.Module,
    fmt: Format,
    examples: list[Example],
    batch_size: int = 64,
    desc: str = "",
    progress: bool = True,
    mixed_precision: str = "no",
) -> float:
    """Percent of examples whose prediction equals the label (``normalize_answer`` on both): the
    ``classification`` evaluator's accuracy, for callers outside a run. Examples are batched by
    length (less padding); the model is put back in its former mode."""
    from ..evaluators import EvalContext
    from ..evaluators.classification import label_scores

    ctx = EvalContext(batch_size=batch_size, mixed_precision=mixed_precision, progress=progress, desc=desc)
    return label_scores(model, fmt, examples, ctx)["accuracy"]
