"""Paired per-item differences between two runs that kept their per-item results
(``keep_samples``): both runs answer the same items (lm-eval's documents, pass@1's problems), so
their difference has the standard error of the per-item differences, the interval a single
pair of runs can give (``migu forgetting`` computes the same between two models).

Per column: the mean difference (with minus without) at the last evaluation point both runs
kept, and a Student-t 95% interval over the items; within one run, the same from its first kept
point (before training) to its last: what the run itself forgot. A mean over columns (the
suite's ``mean``, and every ``--mean-of`` column) combines its columns' differences as
independent: the mean of their means, with the square root of the sum of their squared standard
errors over their number, and the degrees of freedom summed.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from scipy import stats

from .. import metrics
from .pairing import partners, without
from .runs import label_of, order_of

Diff = tuple[float, float, int]
"""Mean difference, its standard error, and the degrees of freedom."""


def last_samples(run: dict[str, Any]) -> tuple[tuple[int, int] | None, dict[str, dict[str, list[float]]]]:
    """The run's last kept evaluation point (task index, epoch) and its per-item results."""
    points = run.get("samples") or []
    if not points:
        return None, {}
    last = points[-1]
    return (int(last["task_index"]), int(last["epoch"])), last["scores"]


def item_difference(without_items: list[float], with_items: list[float]) -> Diff:
    """Mean of the per-item differences, its standard error and degrees of freedom (n - 1)."""
    se = metrics.paired_stderr(without_items, with_items)
    mean = statistics.fmean(w - b for b, w in zip(without_items, with_items, strict=True))
    return mean, float("nan") if se is None else se, len(with_items) - 1


def combined(parts: list[Diff]) -> Diff:
    """The difference of a mean over columns, the columns taken as independent."""
    mean = statistics.fmean(p[0] for p in parts)
    return mean, metrics.mean_of_stderrs([p[1] for p in parts]), sum(p[2] for p in parts)


def _cells(diff: Diff) -> list[str]:
    mean, se, dof = diff
    if dof < 1 or math.isnan(se):
        return [f"{mean:+.2f}", "–"]
    half = float(stats.t.ppf(0.975, dof)) * se
    return [f"{mean:+.2f}", f"[{mean - half:+.2f}, {mean + half:+.2f}]"]


def _column_rows(a: dict[str, dict[str, list[float]]], b: dict[str, dict[str, list[float]]],
                 mean_of: dict[str, tuple[str, ...]]) -> list[tuple[str, str, int, Diff]]:  # fmt: skip
    """(score, column, items, difference b - a) for every column both answered on the same number
    of items, then the suite's ``mean`` over all of them and each ``mean_of`` column."""
    means: dict[str, tuple[str, ...] | None] = {"mean": None, **mean_of}
    rows = []
    for score in a:
        if score not in b:
            continue
        diffs = {c: item_difference(a[score][c], b[score][c]) for c in a[score]
                 if c in b[score] and len(a[score][c]) == len(b[score][c]) and a[score][c]}  # fmt: skip
        rows += [(score, c, len(a[score][c]), d) for c, d in diffs.items()]
        for name, columns in means.items():
            chosen = list(diffs) if columns is None else list(columns)
            if len(chosen) > 1 and all(c in diffs for c in chosen):
                rows.append((score, name, sum(len(a[score][c]) for c in chosen), combined([diffs[c] for c in chosen])))
    return rows


def _rows(without_run: dict[str, Any], with_run: dict[str, Any], mean_of: dict[str, tuple[str, ...]]
          ) -> list[tuple[str, str, int, Diff]]:  # fmt: skip
    """The per-column differences of two runs at their last kept point (none if the points differ)."""
    point_a, a = last_samples(without_run)
    point_b, b = last_samples(with_run)
    if point_a is None or point_a != point_b:
        return []
    return _column_rows(a, b, mean_of)


def item_pair_table(runs: list[dict[str, Any]], component: str, by: tuple[str, ...] = (),
                    mean_of: dict[str, tuple[str, ...]] | None = None) -> str:  # fmt: skip
    """One row per (pair of ``X`` and ``X+component`` of the same model, order and seed, score,
    column): the per-item paired difference at the last kept point and its 95% interval."""
    kept = [r for r in runs if r.get("samples")]
    lines = []
    for run, base in partners(kept, lambda method: without(method, component), by):
        if base is None:
            continue
        for score, column, items, diff in _rows(base, run, mean_of or {}):
            cells = [score, column, run["model"], order_of(run), label_of(base, by), label_of(run, by),
                     run["seed"], items, *_cells(diff)]  # fmt: skip
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    if not lines:
        return ""
    head = "| score | column | model | order | without | with | seed | items | Δ (with - without) | 95% CI |"
    return "\n".join([head, "|" + "---|" * 10, *lines]) + "\n"


def item_change_table(runs: list[dict[str, Any]], by: tuple[str, ...] = (),
                      mean_of: dict[str, tuple[str, ...]] | None = None) -> str:  # fmt: skip
    """One row per (run, score, column): the per-item change from the run's first kept point
    (before training, in a run that evaluates then) to its last, and its 95% interval: what the
    run gained or forgot on those items, with the error of a single run."""
    lines = []
    for run in sorted(runs, key=lambda r: (r["model"], order_of(r), label_of(r, by), r["seed"])):
        points = run.get("samples") or []
        if len(points) < 2:
            continue
        first, last = points[0], points[-1]
        span = (
            f"epoch {first['epoch']} → {last['epoch']}"
            if first["task_index"] == last["task_index"]
            else f"task {first['task_index']} epoch {first['epoch']} → task {last['task_index']} epoch {last['epoch']}"
        )
        for score, column, items, diff in _column_rows(first["scores"], last["scores"], mean_of or {}):
            cells = [score, column, run["model"], order_of(run), label_of(run, by), run["seed"], span, items,
                     *_cells(diff)]  # fmt: skip
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    if not lines:
        return ""
    head = "| score | column | model | order | method | seed | points | items | Δ (last - first) | 95% CI |"
    return "\n".join([head, "|" + "---|" * 10, *lines]) + "\n"


def item_pair_sections(runs: list[dict[str, Any]], by: tuple[str, ...], effect_of: tuple[str, ...],
                       mean_of: dict[str, tuple[str, ...]]) -> list[str]:  # fmt: skip
    """Each run's per-item change from its first kept point to its last, then, per ``effect_of``
    component, the per-item paired differences of the runs that kept them."""
    parts = []
    changes = item_change_table(runs, by, mean_of)
    if changes:
        parts += ["\n## Per-item change within each run, first to last kept point (same items; Student-t 95% "
                  "over the items)\n\n", changes]  # fmt: skip
    for component in effect_of:
        table = item_pair_table(runs, component, by, mean_of)
        if table:
            parts += [f"\n## Per-item differences with minus without {component} (same items, last evaluation "
                      "point; Student-t 95% over the items)\n\n", table]  # fmt: skip
    return parts
