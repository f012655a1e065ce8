"""The paper's two-panel figure from results files: what a method learns and what it forgets, per epoch.

Left: a learning score (default ``pass@1``, e.g. HumanEval's or held-out MBPP's) against the epoch;
right: a general-ability score (default ``lm_eval/acc``, column ``mean``: the suite's mean) against
the epoch; one line per method (mean over seeds, the band spans the seeds' min and max). The data
are the ``curves`` of each run's results.json (``data.evaluate_every=epoch``): ``{"points":
[{"task_index", "epoch"}], "scores": {name: {"higher_is_better", "columns", "values": [[...] per
point]}}}``. The x axis counts epochs from the start of the sequence (a task's epoch e after k
tasks of E epochs is k * E + e; epoch 0 is before training). A CSV of every plotted value (one
row per run and point) is written beside the PNG.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .runs import with_end_points_as_curves

RESULTS = "results.json"


@dataclass(frozen=True)
class Series:
    """One run's values of one score column at its evaluation points."""

    method: str
    seed: Any
    run: str
    epochs: tuple[float, ...]
    values: tuple[float | None, ...]


def results_files(paths: Iterable[str | Path]) -> list[Path]:
    """``results.json`` files: given directly, or found under the given folders."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            found += sorted(p.rglob(RESULTS))
        else:
            raise FileNotFoundError(f"{p} does not exist")
    if not found:
        raise FileNotFoundError(f"no {RESULTS} under {', '.join(map(str, paths))}")
    return found


def parse_score(spec: str) -> tuple[str, str | None]:
    """``name`` or ``name:column`` (``lm_eval/acc:mean``, ``pass@1:code_mbpp``)."""
    name, _, column = spec.partition(":")
    if not name:
        raise ValueError(f"score {spec!r}: expected NAME or NAME:COLUMN")
    return name, column or None


def epoch_positions(points: Sequence[dict[str, Any]]) -> list[float]:
    per_task: dict[int, int] = defaultdict(int)
    for p in points:
        per_task[int(p["task_index"])] = max(per_task[int(p["task_index"])], int(p["epoch"]))
    offsets, total = {}, 0
    for task in sorted(per_task):
        offsets[task] = total
        total += per_task[task]
    return [float(offsets[int(p["task_index"])] + int(p["epoch"])) for p in points]


def column_values(entry: dict[str, Any], index: int) -> list[Any]:
    """One column of a curve score's rows (``None`` where a row is missing or shorter)."""
    return [row[index] if row is not None and index < len(row) else None for row in entry["values"]]


def series(path: Path, score: str, column: str | None) -> Series | None:
    """One run's curve of ``score`` (None when the run has no such curve)."""
    results = with_end_points_as_curves(json.loads(path.read_text(encoding="utf-8")))
    curves = results.get("curves")
    if not curves or score not in curves.get("scores", {}):
        return None
    entry = curves["scores"][score]
    columns = entry["columns"]
    col = column or ("mean" if "mean" in columns else columns[-1])
    if col not in columns:
        raise ValueError(f"{path}: score {score!r} has no column {col!r}; columns: {', '.join(columns)}")
    values = tuple(column_values(entry, columns.index(col)))
    run = path.parent.name
    epochs = tuple(epoch_positions(curves["points"]))
    return Series(str(results.get("method", run)), results.get("seed"), run, epochs, values)


def collect(paths: Iterable[str | Path], score: str, column: str | None) -> list[Series]:
    return [s for s in (series(p, score, column) for p in results_files(paths)) if s is not None]


def _mean_band(runs: list[Series]) -> tuple[list[float], list[float], list[float], list[float]]:
    by_epoch: dict[float, list[float]] = defaultdict(list)
    for run in runs:
        for x, y in zip(run.epochs, run.values, strict=True):
            if y is not None and not (isinstance(y, float) and math.isnan(y)):
                by_epoch[x].append(float(y))
    xs = sorted(by_epoch)
    return (xs, [sum(by_epoch[x]) / len(by_epoch[x]) for x in xs], [min(by_epoch[x]) for x in xs],
            [max(by_epoch[x]) for x in xs])  # fmt: skip


def write_csv(path: Path, panels: dict[str, list[Series]]) -> None:
    """Every plotted value: panel score, method, seed, run, epoch, value."""
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["score", "method", "seed", "run", "epoch", "value"])
        for score, runs in panels.items():
            for run in runs:
                for x, y in zip(run.epochs, run.values, strict=True):
                    out.writerow([score, run.method, run.seed, run.run, x, "" if y is None else y])


def curves_figure(paths: Sequence[str | Path], out: str | Path, learning: str = "pass@1",
                  general: str = "lm_eval/acc:mean", title: str | None = None) -> tuple[Path, Path]:  # fmt: skip
    """Draw the two panels from the results under ``paths`` into ``out`` (PNG) and ``out`` with
    a .csv suffix; returns both paths. Scores are ``NAME`` or ``NAME:COLUMN``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"{out}: the figure is written as PNG (name it *.png)")
    panels = {spec: collect(paths, *parse_score(spec)) for spec in (learning, general)}
    for spec, runs in panels.items():
        if not runs:
            raise ValueError(f"no run under {', '.join(map(str, paths))} has a {parse_score(spec)[0]!r} curve "
                             "(curves come from runs with data.evaluate_every=epoch)")  # fmt: skip
    methods = sorted({r.method for runs in panels.values() for r in runs})
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, (spec, runs), label in zip(axes, panels.items(), ("learning", "general ability"), strict=True):
        for method in methods:
            mine = [r for r in runs if r.method == method]
            if not mine:
                continue
            xs, mean, low, high = _mean_band(mine)
            seeds = len({r.seed for r in mine})
            ax.plot(
                xs, mean, marker="o", ms=3, color=colors[method], label=f"{method} ({seeds} seed{'s' * (seeds > 1)})"
            )
            if seeds > 1:
                ax.fill_between(xs, low, high, color=colors[method], alpha=0.2, lw=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(spec)
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    table = out.with_suffix(".csv")
    write_csv(table, panels)
    return out, table
