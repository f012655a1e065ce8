"""``migu plot``: figures from results files and artifacts (matplotlib, headless Agg backend).

Each figure is a PNG of a fixed pixel size (``SIZES``, 100 dpi; the overlap figure is one panel
column per run) with its numbers in a CSV of the same name beside it:

- ``matrix``: a score-matrix heatmap per run (``--score``: accuracy, or any ``score_matrices`` name);
- ``overlap``: task-overlap heatmaps of MIGU's kept rows (Jaccard and overlap ratio between the
  rows updated on task i and task j; see ``figdata.overlap``), every run with ``kept_rows``
  artifacts side by side (finetune observing MIGU's choice beside finetune+MIGU), per model, order, seed;
- ``agreement``: per task, the Jaccard index between the rows two runs of one order and seed
  updated (MIGU's against random rows, gradient or Fisher scores), with chance beside it (see
  ``agreement``);
- ``threshold``: AA and BWT against MIGU's threshold T, one line per method (runs differing in T);
- ``rates``: learning against forgetting, one line per method through its learning rates
  (``train.lr``; see ``tradeoff``);
- ``ablation``: AA and BWT per masked-layer choice (``methods.migu.layers``/``include``), bar chart
  plus a Markdown table (``ablation.md``);
- ``scatter``: stability-plasticity, learning accuracy (the diagonal) against forgetting (-BWT
  when some run has no forgetting, e.g. ``evaluate_tasks=diagonal``), mean ± std over seeds;
- ``seeds``: AA per method and order, a box over seeds with every run as a dot.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import figdata
from .agreement import agreement_figures
from .drawing import OVERLAP_PANEL, SIZES, heat, plt, save, slug, write_csv
from .figdata import NoMatchingRuns, Point, Score
from .runs import order_of
from .tradeoff import rates_figure

FIGURES = ("matrix", "overlap", "agreement", "threshold", "rates", "ablation", "scatter", "seeds")


@dataclass
class Plotted:
    """What ``plot`` made: image files (each with a CSV beside it), tables, and the figures not drawn."""

    images: list[Path] = field(default_factory=list)
    tables: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def heatmap_figure(rows: Sequence[Sequence[float | None]], columns: Sequence[str], title: str) -> Any:
    """A score matrix (rows: before training, then after each task) as a heatmap figure."""
    values = np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)
    labels = ["(start)", *[f"after {c}" for c in columns]][: len(rows)]
    fig, ax = plt.subplots(figsize=SIZES["matrix"], layout="constrained")
    heat(ax, values, labels, list(columns), title)
    return fig


def _unique(out: Path, stem: str, taken: set[str]) -> Path:
    name, k = stem, 1
    while name in taken:
        k += 1
        name = f"{stem}-{k}"
    taken.add(name)
    return out / f"{name}.png"


def matrix_figures(runs: list[tuple[dict[str, Any], Score]], out: Path, score: str) -> list[Path]:
    """One heatmap per run: rows before training and after each task, columns the scored tasks."""
    paths: list[Path] = []
    taken: set[str] = set()
    for run, s in runs:
        values = np.array([[np.nan if v is None else v for v in row] for row in s.matrix], dtype=float)
        rows = ["(start)", *[f"after {t}" for t in run["sequence"]]]
        path = _unique(out, f"matrix_{slug(Path(run['_path']).parent.name)}", taken)
        fig, ax = plt.subplots(figsize=SIZES["matrix"], layout="constrained")
        direction = "" if s.higher_is_better else " (lower is better)"
        title = f"{run['model']} / {order_of(run)} / {figdata.method_label(run)} / seed {run['seed']}: {score}"
        try:
            m = s.summary()
            title += f"\nAA {m['aa']:.2f}, BWT {m['bwt']:.2f}{direction}"
        except ValueError:  # a suite's own columns, or a schedule that leaves AA's entries out
            title += f"\n{direction.strip(' ()')}"
        heat(ax, values, rows, s.columns, title)
        write_csv(path.with_suffix(".csv"), ["after", *s.columns],
                  [[r, *row] for r, row in zip(rows, values.tolist(), strict=True)])  # fmt: skip
        paths.append(save(fig, path))
    return paths


def overlap_figures(runs: list[tuple[dict[str, Any], Score]], out: Path, layer: str, which: str) -> list[Path]:
    """Per (model, order, seed): every run with kept-row masks as a column, Jaccard above, ratio below."""
    found: dict[tuple[str, str, Any], list[tuple[dict[str, Any], figdata.Overlap]]] = defaultdict(list)
    without: list[str] = []
    for run, _ in runs:
        run_dir = Path(run["_path"]).parent
        if figdata.kept_rows_method(run_dir) is None:
            continue
        try:
            overlap = figdata.overlap(run_dir, layer, which)
        except ValueError as err:  # e.g. LoRA+MIGU masks no FFN layer: the other runs are still drawn
            if layer != "auto":
                raise
            without.append(f"{run_dir.name}: {err}")
            continue
        found[(run["model"], order_of(run), run["seed"])].append((run, overlap))
    if not found:
        reason = f"; {without[0]}" if without else ""
        raise NoMatchingRuns(f"no run has kept_rows artifacts of a layer to show (runs of MIGU, or finetune "
                             f"observing MIGU's choice){reason}")  # fmt: skip
    paths = []
    for (model, order, seed), members in sorted(found.items(), key=lambda kv: str(kv[0])):
        # finetune (or MIGU observing) before the runs MIGU masked
        members.sort(key=lambda m: ("migu" in m[0]["method"].split("+") and not figdata.observes(m[0]),
                                    figdata.method_label(m[0])))  # fmt: skip
        w, h = OVERLAP_PANEL
        fig, axes = plt.subplots(2, len(members), figsize=(w * len(members), h), layout="constrained", squeeze=False)
        rows = []
        for col, (run, ov) in enumerate(members):
            for row, (name, values) in enumerate((("Jaccard", ov.jaccard), ("overlap ratio", ov.ratio))):
                heat(axes[row][col], values, ov.tasks, ov.tasks, f"{figdata.method_label(run)}: {name}\n{ov.layer}",
                      0.0, 1.0, "{:.2f}")  # fmt: skip
                rows += [[figdata.method_label(run), ov.layer, name, a, b, values[i, j]]
                         for i, a in enumerate(ov.tasks) for j, b in enumerate(ov.tasks)]  # fmt: skip
        fig.suptitle(f"Rows updated ({which}) on task i vs task j\n{model} / {order} / seed {seed}", fontsize=10)
        path = out / f"overlap_{slug(f'{model}_{order}_seed{seed}')}.png"
        write_csv(path.with_suffix(".csv"), ["method", "layer", "metric", "task_i", "task_j", "value"], rows)
        paths.append(save(fig, path))
    return paths


def _series_rows(found: dict[str, list[Point]]) -> list[list[Any]]:
    rows = []
    for name, points in found.items():
        for p in points:
            f = p.forgetting or (None, None)
            rows.append([name, p.x, len(p.runs), *p.aa, *p.bwt, *p.learning, *f])
    return rows


_SERIES_HEADER = ["series", "x", "runs", "aa_mean", "aa_std", "bwt_mean", "bwt_std", "learning_mean",
                  "learning_std", "forgetting_mean", "forgetting_std"]  # fmt: skip


def threshold_figure(runs: list[tuple[dict[str, Any], Score]], out: Path, score: str) -> Path:
    """AA and BWT against T, one line per series, error bars = std over seeds."""
    found = figdata.sweep(runs)
    fig, (ax_aa, ax_bwt) = plt.subplots(1, 2, figsize=SIZES["threshold"], layout="constrained")
    for name, points in found.items():
        xs = [p.x for p in points]
        for ax, key in ((ax_aa, "aa"), (ax_bwt, "bwt")):
            ax.errorbar(xs, [getattr(p, key)[0] for p in points], yerr=[getattr(p, key)[1] for p in points],
                        marker="o", capsize=3, label=name)  # fmt: skip
    for ax, what in ((ax_aa, f"AA ({score})"), (ax_bwt, "BWT")):
        ax.set_xlabel("MIGU threshold T (fraction of rows masked)")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    ax_bwt.axhline(0, color="grey", lw=0.8)
    ax_aa.legend(fontsize=7)
    fig.suptitle("Threshold sweep (mean ± std over seeds)", fontsize=10)
    path = out / "threshold.png"
    write_csv(path.with_suffix(".csv"), ["series", "threshold", *_SERIES_HEADER[2:]], _series_rows(found))
    return save(fig, path)


def ablation_figure(runs: list[tuple[dict[str, Any], Score]], out: Path, score: str) -> tuple[Path, str]:
    """Grouped bars of AA and BWT per masked-layer choice; also the Markdown table."""
    found = figdata.ablation(runs)
    fig, (ax_aa, ax_bwt) = plt.subplots(1, 2, figsize=SIZES["ablation"], layout="constrained")
    width = 0.8 / len(found)
    names = sorted({p.x for points in found.values() for p in points})
    for k, (name, points) in enumerate(found.items()):
        at = {p.x: p for p in points}
        xs = [i + (k - (len(found) - 1) / 2) * width for i, n in enumerate(names) if n in at]
        for ax, key in ((ax_aa, "aa"), (ax_bwt, "bwt")):
            ax.bar(xs, [getattr(at[n], key)[0] for n in names if n in at], width,
                   yerr=[getattr(at[n], key)[1] for n in names if n in at], capsize=3, label=name)  # fmt: skip
    for ax, what in ((ax_aa, f"AA ({score})"), (ax_bwt, "BWT")):
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(what)
        ax.grid(axis="y", alpha=0.3)
    ax_aa.legend(fontsize=7)
    fig.suptitle("Which layers MIGU masks (mean ± std over seeds)", fontsize=10)
    path = out / "ablation.png"
    write_csv(path.with_suffix(".csv"), ["series", "layers", *_SERIES_HEADER[2:]], _series_rows(found))
    lines = ["| series | layers | AA | BWT | new-task acc. | forgetting | runs |", "|---|---|---|---|---|---|---|"]
    for name, points in found.items():
        for p in points:
            f = "-" if p.forgetting is None else _pm(p.forgetting, len(p.runs))
            lines.append(f"| {name} | {p.x} | {_pm(p.aa, len(p.runs))} | {_pm(p.bwt, len(p.runs))} | "
                         f"{_pm(p.learning, len(p.runs))} | {f} | {len(p.runs)} |")  # fmt: skip
    table = "\n".join(lines) + "\n"
    (out / "ablation.md").write_text(table)
    return save(fig, path), table


def _pm(value: tuple[float, float], n: int) -> str:
    return f"{value[0]:.2f} ± {value[1]:.2f}" if n > 1 else f"{value[0]:.2f}"


def scatter_figure(runs: list[tuple[dict[str, Any], Score]], out: Path, score: str, by: tuple[str, ...]) -> Path:
    """Learning accuracy vs forgetting per run (faint) and per method and order (mean ± std over
    seeds): one colour and marker per method; the orders of a method are its several large markers,
    each labelled with its order when there are several ("order5" as "5")."""
    found = figdata.groups(runs, by)
    several = len({k[1] for k in found}) > 1
    use_forgetting = all(p.forgetting is not None for p in found.values())
    measure = "forgetting" if use_forgetting else "-BWT"
    fig, ax = plt.subplots(figsize=SIZES["scatter"], layout="constrained")
    markers = "osD^v<>pP*Xh"
    labels = list(dict.fromkeys(k[0] for k in found))
    rows = []
    for (name, order), p in found.items():
        k = labels.index(name)
        style: dict[str, Any] = {"marker": markers[k % len(markers)], "color": f"C{k % 10}"}
        for run in p.runs:
            m = figdata.score_of(run, score).summary()  # type: ignore[union-attr]
            x = m["forgetting"] if use_forgetting else -m["bwt"]
            ax.scatter(x, m["learning_accuracy"], alpha=0.3, s=18, **style)
            rows.append([name, order, run["seed"], m["learning_accuracy"], None, x, None, measure])
        x = p.forgetting if use_forgetting and p.forgetting is not None else (-p.bwt[0], p.bwt[1])
        first = not any(r[0] == name and r[2] == "mean" for r in rows)
        ax.errorbar(x[0], p.learning[0], xerr=x[1], yerr=p.learning[1], ms=8, capsize=3, lw=1,
                    label=name if first else None, **style)  # fmt: skip
        if several:
            ax.annotate(order.removeprefix("order"), (x[0], p.learning[0]), textcoords="offset points",
                        xytext=(6, 4), fontsize=7, color=style["color"])  # fmt: skip
        rows.append([name, order, "mean", p.learning[0], p.learning[1], x[0], x[1], measure])
    ax.set_xlabel(f"{measure} (lower: more stable)")
    ax.set_ylabel(f"learning {score} (diagonal; higher: more plastic)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    orders = sorted({k[1] for k in found})
    labelled = "; labels: order" if several else ""
    ax.set_title(f"Stability vs plasticity: per method and order ({', '.join(orders)}{labelled}) "
                 "mean ± std over seeds; faint: single runs", fontsize=9)  # fmt: skip
    path = out / "scatter.png"
    write_csv(path.with_suffix(".csv"), ["method", "order", "seed", "learning_mean", "learning_std",
                                         "x_mean", "x_std", "x_measure"], rows)  # fmt: skip
    return save(fig, path)


def seeds_figure(runs: list[tuple[dict[str, Any], Score]], out: Path, score: str, by: tuple[str, ...]) -> Path:
    """AA over seeds: per method a box for each order (one colour per order), every run a dot."""
    found = figdata.seed_groups(runs, by)
    fig, ax = plt.subplots(figsize=SIZES["seeds"], layout="constrained")
    names = list(dict.fromkeys(k[0] for k in found))
    orders = sorted({k[1] for k in found})
    width = 0.8 / len(orders)
    rows = []
    for (name, order), point in found.items():
        values = []
        for run in sorted(point.runs, key=lambda r: r["seed"]):
            aa = figdata.score_of(run, score).summary()["aa"]  # type: ignore[union-attr]
            values.append(aa)
            rows.append([name, order, run["seed"], aa])
        k = orders.index(order)
        at = names.index(name) + (k - (len(orders) - 1) / 2) * width
        color = f"C{k % 10}"
        ax.boxplot([values], positions=[at], widths=width * 0.8, patch_artist=True, manage_ticks=False,
                   boxprops={"facecolor": color, "alpha": 0.35}, medianprops={"color": color})  # fmt: skip
        first = next(n for n, o in found if o == order) == name  # one legend entry per order
        ax.scatter(np.full(len(values), at), values, s=12, color=color, zorder=3, label=order if first else None)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"AA ({score})")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, title="order", title_fontsize=7)
    ax.set_title("AA over seeds, per method and order (a box per order; dots: runs)", fontsize=10)
    path = out / "seeds.png"
    write_csv(path.with_suffix(".csv"), ["method", "order", "seed", "aa"], rows)
    return save(fig, path)


def plot(
    paths: Sequence[str | Path],
    out: str | Path,
    figures: Sequence[str] = (),
    score: str = "accuracy",
    layer: str = "auto",
    mask: str = "ever",
    by: Sequence[str] = (),
    settings_of: figdata.SettingsOf | None = None,
) -> Plotted:
    """Draw ``figures`` (default: every figure the runs allow) from the results under ``paths`` into
    ``out``. A figure asked for by name with no matching runs raises ``NoMatchingRuns``; in the
    default mode it is listed in ``Plotted.skipped`` with the reason, and nothing drawn at all is
    an error too. ``settings_of``: see ``runs.load_results``."""
    unknown = [f for f in figures if f not in FIGURES]
    if unknown:
        raise ValueError(f"unknown figure(s) {unknown}; choose from {', '.join(FIGURES)}")
    runs = figdata.scored(figdata.load_runs(paths, settings_of), score)
    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    done = Plotted()
    try:
        _draw(done, runs, out, figures, score, layer, mask, tuple(by))
    except Exception:
        for image in done.images:  # nothing left behind by a failed call
            image.unlink(missing_ok=True)
            image.with_suffix(".csv").unlink(missing_ok=True)
        (out / "ablation.md").unlink(missing_ok=True)
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    return done


def _draw(done: Plotted, runs: list[tuple[dict[str, Any], Score]], out: Path, figures: Sequence[str], score: str,
          layer: str, mask: str, by: tuple[str, ...]) -> None:  # fmt: skip
    for name in figures or FIGURES:
        try:
            use = runs if name in ("matrix", "overlap", "agreement") else figdata.summarisable(runs, score)
            if name == "matrix":
                done.images += matrix_figures(use, out, score)
            elif name == "overlap":
                done.images += overlap_figures(use, out, layer, mask)
            elif name == "agreement":
                done.images += agreement_figures(use, out, layer, mask)
            elif name == "threshold":
                done.images.append(threshold_figure(use, out, score))
            elif name == "rates":
                done.images.append(rates_figure(use, out, score))
            elif name == "ablation":
                image, done.tables["ablation"] = ablation_figure(use, out, score)
                done.images.append(image)
            elif name == "scatter":
                done.images.append(scatter_figure(use, out, score, by))
            else:
                done.images.append(seeds_figure(use, out, score, by))
        except NoMatchingRuns as err:
            if figures:
                raise NoMatchingRuns(f"figure {name!r}: {err}") from None
            done.skipped[name] = str(err)
    if not done.images:
        raise NoMatchingRuns("no figure could be drawn: " + "; ".join(f"{k}: {v}" for k, v in done.skipped.items()))
