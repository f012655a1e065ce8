"""Learning against forgetting through the learning rates: the ``rates`` figure of ``migu plot``.

When methods prefer different rates, a comparison at one rate favours one of them; drawing each
method as a line through its rates shows the trade-off it offers instead (the view of Biderman et
al. 2024, "LoRA Learns Less and Forgets Less"). One line per method (and per setting that varies
within it, as the threshold figure), through the runs that differ only in ``train.lr`` (and seed):
each point is the mean over the seeds that ran at every rate of that line, so that all its points
average the same seeds; runs of other seeds are left out of the figure, and the CSV says which
seeds each point holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import figdata
from .drawing import SIZES, plt, save, write_csv
from .figdata import NoMatchingRuns, Score
from .runs import flat_config

KEY = "train.lr"


def _rate(run: dict[str, Any]) -> float | None:
    value = flat_config(run).get(KEY)
    return float(value) if value is not None else None


def rate_lines(runs: list[tuple[dict[str, Any], Score]]) -> dict[str, list[figdata.Point]]:
    """``{line label: points by rate}``, each point over the seeds every point of its line has."""
    found = figdata.series(runs, _rate, (), KEY, config_keys=(KEY,))
    scores = {id(run): score for run, score in runs}
    out = {}
    for name, points in found.items():
        seeds = set.intersection(*({r["seed"] for r in p.runs} for p in points))
        if not seeds:
            continue
        out[name] = [figdata.point(p.x, [(r, scores[id(r)]) for r in p.runs if r["seed"] in seeds])
                     for p in points]  # fmt: skip
    if not out:
        raise NoMatchingRuns(f"no method has runs of one seed at two or more values of {KEY}")
    return out


def wide_spread(values: list[float]) -> bool:
    """Whether forgetting values span so much (a collapsed rate beside working ones) that a linear
    axis would crowd the working rates into one corner: the largest more than 10x the smallest
    (both in magnitude, the smallest taken as at least 1)."""
    sizes = [abs(v) for v in values]
    return max(sizes) > 10 * max(min(sizes), 1.0)


def rates_figure(runs: list[tuple[dict[str, Any], Score]], out: Path, score: str) -> Path:
    """Learning (the diagonal) against forgetting, one line per method through its rates."""
    lines = rate_lines(runs)
    use_forgetting = all(p.forgetting is not None for points in lines.values() for p in points)
    measure = "forgetting" if use_forgetting else "-BWT"
    fig, ax = plt.subplots(figsize=SIZES["rates"], layout="constrained")
    rows, every_x = [], []
    for k, (name, points) in enumerate(lines.items()):
        xs = [p.forgetting[0] if use_forgetting and p.forgetting else -p.bwt[0] for p in points]
        every_x += xs
        ys = [p.learning[0] for p in points]
        ax.plot(xs, ys, marker="osD^v<>pP*Xh"[k % 12], color=f"C{k % 10}", label=name)
        for p, x, y in zip(points, xs, ys, strict=True):
            ax.annotate(f"{p.x:g}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7, color=f"C{k % 10}")
            seeds = sorted({r["seed"] for r in p.runs})
            rows.append([name, p.x, " ".join(map(str, seeds)), y, p.learning[1], x, p.aa[0], measure])
    wide = wide_spread(every_x)
    if wide:
        ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlabel(f"{measure} (lower: more stable){'; symmetric log scale' if wide else ''}")
    ax.set_ylabel(f"learning {score} (diagonal; higher: more plastic)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"Learning vs forgetting through the learning rates (labels: {KEY}); mean over the seeds "
                 "of every rate", fontsize=9)  # fmt: skip
    path = out / "rates.png"
    write_csv(path.with_suffix(".csv"), ["method", "lr", "seeds", "learning_mean", "learning_std", "x_mean",
                                         "aa_mean", "x_measure"], rows)  # fmt: skip
    return save(fig, path)
