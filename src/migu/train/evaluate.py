"""Accuracy of a model on a task's examples: exact match of the predicted label."""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.tasks import Example
from .formats import Format, normalize_answer


def accuracy(
    model: nn.Module,
    fmt: Format,
    examples: list[Example],
    batch_size: int = 64,
    desc: str = "",
    progress: bool = True,
    mixed_precision: str = "no",
) -> float:
    """Percent of examples whose prediction equals the label (``normalize_answer`` on both).

    Examples are batched by length (less padding); the model is put back in its former mode.
    """
    if not examples:
        raise ValueError(f"no examples to evaluate {desc}".strip())
    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].text))
    correct = 0
    try:
        device = next(model.parameters()).device
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed_precision == "bf16"):
            for start in tqdm(
                range(0, len(order), batch_size),
                desc=f"eval {desc}".strip(),
                unit="batch",
                disable=not progress,
                leave=False,
            ):
                chunk = [examples[i] for i in order[start : start + batch_size]]
                for example, answer in zip(chunk, fmt.predict(model, chunk), strict=True):
                    correct += normalize_answer(answer) == normalize_answer(example.label)
    finally:
        model.train(was_training)
    return 100.0 * correct / len(examples)
