"""Continual-learning metrics as pure functions of a score matrix and its direction.

``R`` has T + 1 rows and T columns, in training order: row 0 is measured before any training,
row i (1-based) after training on task i; ``R[i][j]`` is the score on task j (accuracy in percent,
macro-F1, perplexity, ...). An entry may be ``None`` (not evaluated): ``data.evaluate_tasks=seen``
leaves row 0 and the entries above the diagonal empty, ``diagonal`` also the entries below it
but for the last row. AA, BWT and learning accuracy need none of those; FWT and forgetting do
and are ``None`` without them.

``higher_is_better`` says the score's direction (False for a loss or perplexity). AA and learning
accuracy are means in the score's own units; BWT, FWT and forgetting are signed so that they read
the same way for every score: BWT < 0 and forgetting > 0 mean the model got worse on old tasks,
FWT > 0 that earlier tasks helped a later one.
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


def _sign(higher_is_better: bool) -> float:
    return 1.0 if higher_is_better else -1.0


def backward_transfer(matrix: Matrix, higher_is_better: bool = True) -> float:
    """BWT: mean over tasks 1..T-1 of (final score - score just after learning the task), negated
    for a lower-is-better score. Negative values are forgetting. 0 for a single task."""
    tasks = _check(matrix)
    if tasks < 2:
        return 0.0
    total = sum(_at(matrix, tasks, j, "BWT") - _at(matrix, j + 1, j, "BWT") for j in range(tasks - 1))
    return _sign(higher_is_better) * total / (tasks - 1)


def forward_transfer(matrix: Matrix, higher_is_better: bool = True) -> float | None:
    """FWT: mean over tasks 2..T of (score before learning the task - score of the untrained
    model, row 0), negated for a lower-is-better score. 0 for a single task; ``None`` when those
    tasks were not evaluated before being learned."""
    tasks = _check(matrix)
    if tasks < 2:
        return 0.0
    diffs = [a - b for j in range(1, tasks) if (a := matrix[j][j]) is not None and (b := matrix[0][j]) is not None]
    return _sign(higher_is_better) * sum(diffs) / (tasks - 1) if len(diffs) == tasks - 1 else None


def forgetting_per_task(matrix: Matrix, higher_is_better: bool = True) -> list[float]:
    """For each task but the last: best score from the row that learned it up to the row before
    the last, minus final (for a lower-is-better score: final minus the lowest). Rows before the
    task was learned do not count (a task can score higher zero-shot than after training and
    that is not forgetting), so the value is the same whether or not unseen tasks were evaluated."""
    tasks = _check(matrix)
    sign = _sign(higher_is_better)
    return [
        max(sign * _at(matrix, i, j, "forgetting") for i in range(j + 1, tasks))
        - sign * _at(matrix, tasks, j, "forgetting")
        for j in range(tasks - 1)
    ]


def forgetting(matrix: Matrix, higher_is_better: bool = True) -> float:
    """Mean of ``forgetting_per_task`` (Chaudhry et al.); 0 for a single task."""
    per_task = forgetting_per_task(matrix, higher_is_better)
    return sum(per_task) / len(per_task) if per_task else 0.0


def learning_accuracy(matrix: Matrix) -> float:
    """Mean score on each task right after learning it (how well new tasks are learned)."""
    tasks = _check(matrix)
    return sum(_at(matrix, j + 1, j, "learning accuracy") for j in range(tasks)) / tasks


def _complete_below_diagonal(matrix: Matrix, tasks: int) -> bool:
    return all(matrix[i][j] is not None for j in range(tasks) for i in range(j + 1, tasks + 1))


def summary(matrix: Matrix, higher_is_better: bool = True) -> dict[str, Any]:
    """All metrics of one run's score matrix (forgetting is ``None`` when the rows between
    learning a task and the end were not evaluated, as with ``evaluate_tasks=diagonal``)."""
    tasks = _check(matrix)
    complete = _complete_below_diagonal(matrix, tasks)
    return {
        "aa": average_accuracy(matrix),
        "bwt": backward_transfer(matrix, higher_is_better),
        "fwt": forward_transfer(matrix, higher_is_better),
        "forgetting": forgetting(matrix, higher_is_better) if complete else None,
        "learning_accuracy": learning_accuracy(matrix),
        "final_accuracy": [_at(matrix, tasks, j, "final accuracy") for j in range(tasks)],
        "forgetting_per_task": forgetting_per_task(matrix, higher_is_better) if complete else None,
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


def paired_stderr(before: Sequence[float], after: Sequence[float]) -> float | None:
    """The standard error of the mean per-item change when both answer the same items (sample
    standard deviation of the differences / sqrt(n)); None with fewer than two items."""
    n = len(after)
    if n < 2 or len(before) != n:
        return None
    diffs = [a - b for a, b in zip(after, before, strict=True)]
    mean = sum(diffs) / n
    return math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n)


def mean_of_stderrs(stderrs: Sequence[float]) -> float:
    """The standard error of a mean over columns taken as independent: sqrt(sum of squares) / count."""
    return math.sqrt(sum(s * s for s in stderrs)) / len(stderrs)
