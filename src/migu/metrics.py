"""Continual-learning metrics as pure functions of the accuracy matrix.

``R`` has T + 1 rows and T columns, in training order: row 0 is measured before any training,
row i (1-based) after training on task i; ``R[i][j]`` is the accuracy on task j (percent).
An entry may be ``None`` (not evaluated): a run with ``data.evaluate_tasks=seen`` evaluates only
the tasks trained so far, which leaves row 0 and the entries above the diagonal empty. AA, BWT
and learning accuracy need none of those; FWT does and is ``None`` without them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

Matrix = Sequence[Sequence[float | None]]


def _check(matrix: Matrix) -> int:
    tasks = len(matrix[0]) if matrix else 0
    if tasks == 0 or len(matrix) != tasks + 1 or any(len(row) != tasks for row in matrix):
        shape = f"{len(matrix)} rows of lengths {[len(r) for r in matrix]}"
        raise ValueError(f"an accuracy matrix for T tasks has T + 1 rows of T values; got {shape}")
    return tasks


def _at(matrix: Matrix, i: int, j: int, metric: str) -> float:
    value = matrix[i][j]
    if value is None:
        raise ValueError(f"{metric} needs the accuracy on task {j + 1} after row {i}, which was not evaluated")
    return value


def average_accuracy(matrix: Matrix) -> float:
    """AA: mean accuracy over all tasks after the last task."""
    tasks = _check(matrix)
    return sum(_at(matrix, tasks, j, "AA") for j in range(tasks)) / tasks


def backward_transfer(matrix: Matrix) -> float:
    """BWT: mean over tasks 1..T-1 of (final accuracy - accuracy just after learning the task).
    Negative values are forgetting. 0 for a single task."""
    tasks = _check(matrix)
    if tasks < 2:
        return 0.0
    return sum(_at(matrix, tasks, j, "BWT") - _at(matrix, j + 1, j, "BWT") for j in range(tasks - 1)) / (tasks - 1)


def forward_transfer(matrix: Matrix) -> float | None:
    """FWT: mean over tasks 2..T of (accuracy before learning the task - accuracy of the
    untrained model, row 0). 0 for a single task; ``None`` when those tasks were not evaluated
    before being learned."""
    tasks = _check(matrix)
    if tasks < 2:
        return 0.0
    diffs = [a - b for j in range(1, tasks) if (a := matrix[j][j]) is not None and (b := matrix[0][j]) is not None]
    return sum(diffs) / (tasks - 1) if len(diffs) == tasks - 1 else None


def forgetting_per_task(matrix: Matrix) -> list[float]:
    """For each task but the last: best accuracy from the row that learned it up to the row
    before the last, minus final. Rows before the task was learned do not count (a task can
    score higher zero-shot than after training and that is not forgetting), so the value is the
    same whether or not unseen tasks were evaluated."""
    tasks = _check(matrix)
    return [
        max(_at(matrix, i, j, "forgetting") for i in range(j + 1, tasks)) - _at(matrix, tasks, j, "forgetting")
        for j in range(tasks - 1)
    ]


def forgetting(matrix: Matrix) -> float:
    """Mean of ``forgetting_per_task`` (Chaudhry et al.); 0 for a single task."""
    per_task = forgetting_per_task(matrix)
    return sum(per_task) / len(per_task) if per_task else 0.0


def learning_accuracy(matrix: Matrix) -> float:
    """Mean accuracy on each task right after learning it (how well new tasks are learned)."""
    tasks = _check(matrix)
    return sum(_at(matrix, j + 1, j, "learning accuracy") for j in range(tasks)) / tasks


def summary(matrix: Matrix) -> dict[str, Any]:
    """All metrics of one run."""
    tasks = _check(matrix)
    return {
        "aa": average_accuracy(matrix),
        "bwt": backward_transfer(matrix),
        "fwt": forward_transfer(matrix),
        "forgetting": forgetting(matrix),
        "learning_accuracy": learning_accuracy(matrix),
        "final_accuracy": [_at(matrix, tasks, j, "final accuracy") for j in range(tasks)],
        "forgetting_per_task": forgetting_per_task(matrix),
    }


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    xs = list(values)
    if not xs:
        raise ValueError("mean_std needs at least one value")
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
