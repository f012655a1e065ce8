"""Continual-learning metrics as pure functions of the accuracy matrix.

``R`` has T + 1 rows and T columns, in training order: row 0 is measured before any training,
row i (1-based) after training on task i; ``R[i][j]`` is the accuracy on task j (percent).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

Matrix = Sequence[Sequence[float]]


def _check(matrix: Matrix) -> int:
    tasks = len(matrix[0]) if matrix else 0
    if tasks == 0 or len(matrix) != tasks + 1 or any(len(row) != tasks for row in matrix):
        shape = f"{len(matrix)} rows of lengths {[len(r) for r in matrix]}"
        raise ValueError(f"an accuracy matrix for T tasks has T + 1 rows of T values; got {shape}")
    return tasks


def average_accuracy(matrix: Matrix) -> float:
    """AA: mean accuracy over all tasks after the last task."""
    tasks = _check(matrix)
    return sum(matrix[tasks]) / tasks


def backward_transfer(matrix: Matrix) -> float:
    """BWT: mean over tasks 1..T-1 of (final accuracy - accuracy just after learning the task).
    Negative values are forgetting. 0 for a single task."""
    tasks = _check(matrix)
    if tasks < 2:
        return 0.0
    return sum(matrix[tasks][j] - matrix[j + 1][j] for j in range(tasks - 1)) / (tasks - 1)


def forward_transfer(matrix: Matrix) -> float:
    """FWT: mean over tasks 2..T of (accuracy before learning the task - accuracy of the
    untrained model, row 0). 0 for a single task."""
    tasks = _check(matrix)
    if tasks < 2:
        return 0.0
    return sum(matrix[j][j] - matrix[0][j] for j in range(1, tasks)) / (tasks - 1)


def forgetting_per_task(matrix: Matrix) -> list[float]:
    """For each task but the last: best accuracy after any earlier training row minus final."""
    tasks = _check(matrix)
    return [max(matrix[i][j] for i in range(1, tasks)) - matrix[tasks][j] for j in range(tasks - 1)]


def forgetting(matrix: Matrix) -> float:
    """Mean of ``forgetting_per_task`` (Chaudhry et al.); 0 for a single task."""
    per_task = forgetting_per_task(matrix)
    return sum(per_task) / len(per_task) if per_task else 0.0


def learning_accuracy(matrix: Matrix) -> float:
    """Mean accuracy on each task right after learning it (how well new tasks are learned)."""
    tasks = _check(matrix)
    return sum(matrix[j + 1][j] for j in range(tasks)) / tasks


def summary(matrix: Matrix) -> dict[str, float | list[float]]:
    """All metrics of one run."""
    tasks = _check(matrix)
    return {
        "aa": average_accuracy(matrix),
        "bwt": backward_transfer(matrix),
        "fwt": forward_transfer(matrix),
        "forgetting": forgetting(matrix),
        "learning_accuracy": learning_accuracy(matrix),
        "final_accuracy": list(matrix[tasks]),
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
