"""Tables of the per-epoch curves (``data.evaluate_every: epoch``; instruction tuning): every
score column at every evaluation point, mean ± std over seeds per method, and each ``X+C``
against its ``X`` on the same model, order and seed (``--effect-of C``), as differences per point.
The figure of the same numbers is ``migu curves``."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from .curves import column_values, epoch_positions
from .pairing import partners, pm, without
from .runs import label_of, order_of

Curve = dict[tuple[str, str], dict[float, float | None]]
"""(score, column) -> {epoch: value} of one run."""


def run_curves(run: dict[str, Any]) -> Curve:
    """A run's curves by (score, column) and epoch counted from the start of its sequence."""
    curves = run.get("curves") or {}
    if not curves.get("points"):
        return {}
    epochs = epoch_positions(curves["points"])
    out: Curve = {}
    for score, entry in curves.get("scores", {}).items():
        for index, column in enumerate(entry["columns"]):
            values = column_values(entry, index)
            out[(score, column)] = {
                x: None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
                for x, v in zip(epochs, values, strict=True)
            }  # fmt: skip
    return out


def _keys(runs: list[dict[str, Any]]) -> tuple[list[tuple[str, str]], list[float]]:
    """Score columns in the order the runs first give them, and every epoch any run reached."""
    keys: dict[tuple[str, str], None] = {}
    epochs: set[float] = set()
    for run in runs:
        for key, values in run_curves(run).items():
            keys.setdefault(key)
            epochs.update(values)
    return list(keys), sorted(epochs)


def _epoch_label(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def _header(first: list[str], epochs: list[float]) -> list[str]:
    cells = [*first, *(f"epoch {_epoch_label(x)}" for x in epochs)]
    return [_row(cells), "|" + "---|" * len(cells)]


def curve_table(runs: list[dict[str, Any]], by: tuple[str, ...] = ()) -> str:
    """One row per score column and (model, method variant): its value at every epoch."""
    runs = [r for r in runs if run_curves(r)]
    if not runs:
        return ""
    keys, epochs = _keys(runs)
    groups: dict[tuple[str, str, str], list[Curve]] = defaultdict(list)
    for run in runs:
        groups[(run["model"], order_of(run), label_of(run, by))].append(run_curves(run))
    lines = _header(["score", "column", "model", "order", "method", "runs"], epochs)
    for score, column in keys:
        for (model, order, method), members in sorted(groups.items()):
            mine = [c[(score, column)] for c in members if (score, column) in c]
            if not mine:
                continue
            values = [pm([c.get(x) for c in mine]) for x in epochs]
            lines.append(_row([score, column, model, order, method, len(mine), *values]))
    return "\n".join(lines) + "\n"


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def curve_effect_table(runs: list[dict[str, Any]], component: str, by: tuple[str, ...] = ()) -> str:
    """Per score column and pair (``X`` and ``X+component``, same model, order and seed): the
    difference with minus without at every epoch, mean ± std over the pairs."""
    runs = [r for r in runs if run_curves(r)]
    pairs: dict[tuple[str, str, str, str], list[tuple[Curve, Curve]]] = defaultdict(list)
    for run, base in partners(runs, lambda method: without(method, component), by):
        if base is not None:
            pair = (run["model"], order_of(run), label_of(base, by), label_of(run, by))
            pairs[pair].append((run_curves(base), run_curves(run)))
    if not pairs:
        return ""
    keys, epochs = _keys(runs)
    lines = _header(["score", "column", "model", "order", "without", "with", "pairs"], epochs)
    for score, column in keys:
        for (model, order, base_label, label), members in sorted(pairs.items()):
            key = (score, column)
            both = [(b[key], w[key]) for b, w in members if key in b and key in w]
            if not both:
                continue
            values = [pm([_minus(w.get(x), b.get(x)) for b, w in both]) for x in epochs]
            lines.append(_row([score, column, model, order, base_label, label, len(both), *values]))
    return "\n".join(lines) + "\n"


def curve_sections(runs: list[dict[str, Any]], by: tuple[str, ...], effect_of: tuple[str, ...]) -> list[str]:
    """Runs with per-epoch curves: their values and, per ``effect_of`` component, the paired differences."""
    table = curve_table(runs, by)
    if not table:
        return []
    parts = ["\n## Curves (every evaluation point; epoch 0 is before training; mean ± std over seeds)\n\n", table]
    for component in effect_of:
        effect = curve_effect_table(runs, component, by)
        if effect:
            parts += [f"\n## Curves with minus without {component} (paired: same order and seed; mean ± std)\n\n",
                      effect]  # fmt: skip
    return parts
