"""The numbers behind ``migu plot``'s figures, from results files and artifacts only (no matplotlib,
no torch): score matrices of any name, variant series over a config key (threshold sweep, component
ablation), stability-plasticity points, AA per seed, and task overlap of MIGU's kept rows.

A figure that has no matching runs raises ``NoMatchingRuns`` (a ``ValueError``, one line), never
an empty picture.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import metrics
from ..artifacts import kept_row_masks, read_index
from .runs import SettingsOf, flat_config, load_results, order_of

# config keys that never tell variants apart (bookkeeping) or are shown in a label already
_IGNORED = {"seed", "method", "model", "output_dir", "name", "progress", "data.root"}  # (not settings)
# MIGU-like method components and their threshold / layer keys
_COMPONENTS = ("migu", "random_update")
_LAYER_KEYS = ("layers", "include", "exclude")


class NoMatchingRuns(ValueError):
    """A figure was asked for and no run fits it."""


@dataclass
class Score:
    """One run's matrix of one score: T + 1 rows (row 0 before training), one column per task."""

    matrix: list[list[float | None]]
    higher_is_better: bool
    columns: list[str]

    def summary(self) -> dict[str, Any]:
        return metrics.summary(self.matrix, self.higher_is_better)


def load_runs(paths: Iterable[str | Path], settings_of: SettingsOf | None = None) -> list[dict[str, Any]]:
    """Every results.json at or below ``paths`` (``runs.load_results``); ``run["_path"]`` is its file."""
    return load_results(paths, settings_of)


def score_of(run: dict[str, Any], name: str) -> Score | None:
    """The run's score matrix ``name`` (``accuracy`` falls back to ``accuracy_matrix``), or None."""
    entry = (run.get("score_matrices") or {}).get(name)
    if entry is not None:
        return Score(entry["matrix"], bool(entry.get("higher_is_better", True)),
                     list(entry.get("columns") or run["sequence"]))  # fmt: skip
    if name == "accuracy" and run.get("accuracy_matrix"):
        return Score(run["accuracy_matrix"], True, list(run["sequence"]))
    return None


def scored(runs: list[dict[str, Any]], name: str) -> list[tuple[dict[str, Any], Score]]:
    """(run, score) for every run that has score ``name``; none is an error naming the scores found."""
    out = [(r, s) for r in runs if (s := score_of(r, name)) is not None]
    if not out:
        found = sorted({k for r in runs for k in (r.get("score_matrices") or {})} |
                       ({"accuracy"} if any(r.get("accuracy_matrix") for r in runs) else set()))  # fmt: skip
        raise NoMatchingRuns(f"no run has a score named {name!r}; scores found: {', '.join(found) or 'none'}")
    return out


def summarisable(runs: list[tuple[dict[str, Any], Score]], name: str) -> list[tuple[dict[str, Any], Score]]:
    """The runs whose score has AA and BWT: a per-task matrix (not a suite's own columns) with
    the entries those need. None is an error: only the matrix figure can show such a score."""
    out = []
    for run, score in runs:
        try:
            score.summary()
        except ValueError:
            continue
        out.append((run, score))
    if not out:
        raise NoMatchingRuns(f"score {name!r} has no AA/BWT in any run (a suite's own columns, or entries not "
                             "evaluated): only the matrix figure shows it")  # fmt: skip
    return out


def observes(run: dict[str, Any]) -> bool:
    """Whether the run's MIGU only observed (``methods.migu.mask_mode=observe``: plain finetuning
    that records the rows MIGU would keep)."""
    return "migu" in run["method"].split("+") and (
        run.get("config", {}).get("methods", {}).get("migu", {}).get("mask_mode") == "observe")  # fmt: skip


def method_label(run: dict[str, Any]) -> str:
    """The method spec, with ``migu`` shown as ``migu(observe)`` when it only observed."""
    return run["method"].replace("migu", "migu(observe)") if observes(run) else run["method"]


def label(run: dict[str, Any], keys: Iterable[str] = ()) -> str:
    """The method, followed by the values of ``keys`` the run sets."""
    flat = flat_config(run)
    # a method's own settings by their short name (threshold=0.5, not methods.migu.threshold=0.5)
    short = {k: re.sub(r"^methods\.[^.]+\.", "", k) for k in keys}
    values = [f"{short[k]}={flat[k]}" for k in keys if k in flat and k != "methods.migu.mask_mode"]
    return method_label(run) + (" [" + ", ".join(values) + "]" if values else "")


def _varying(runs: list[dict[str, Any]], skip: Callable[[str], bool]) -> list[str]:
    """Config keys that runs set to more than one value (a key some runs leave unset and the rest
    set to one value does not count: results written with and without defaults compare equal)."""
    values: dict[str, set[str]] = defaultdict(set)
    for run in runs:
        for key, value in flat_config(run).items():
            if key not in _IGNORED and not skip(key):
                values[key].add(value)
    return sorted(k for k, v in values.items() if len(v) > 1)


def components(run: dict[str, Any]) -> list[str]:
    """The MIGU-like parts (``migu``, ``random_update``) of the run's method spec."""
    return [c for c in run["method"].split("+") if c in _COMPONENTS]


def threshold_of(run: dict[str, Any]) -> float | None:
    """T of the run's MIGU (or random-update) component as recorded in its config, else None."""
    parts = components(run)
    value = run.get("config", {}).get("methods", {}).get(parts[0], {}).get("threshold") if parts else None
    return float(value) if isinstance(value, int | float) else None


def _pattern_text(pattern: str) -> str:
    return re.sub(r"\\(.)", r"\1", pattern).strip("^$")


def component_of(run: dict[str, Any]) -> str | None:
    """Which layers the run's MIGU masks: the ``layers`` preset (default ``all_linear``), then any
    ``include``/``exclude`` patterns (regex escapes and anchors dropped for reading)."""
    parts = components(run)
    if not parts:
        return None
    settings = run.get("config", {}).get("methods", {}).get(parts[0], {})
    text = str(settings.get("layers", "all_linear"))
    for key in ("include", "exclude"):
        patterns = settings.get(key) or ()
        if isinstance(patterns, str):
            patterns = (patterns,)
        if patterns:
            text += f" {key} " + "|".join(_pattern_text(p) for p in patterns)
    return text


@dataclass
class Point:
    """One x value of a series: the runs there and their metrics (mean and std over them)."""

    x: Any
    runs: list[dict[str, Any]]
    aa: tuple[float, float]
    bwt: tuple[float, float]
    learning: tuple[float, float]
    forgetting: tuple[float, float] | None


def point(x: Any, members: list[tuple[dict[str, Any], Score]]) -> Point:
    """The point at ``x`` of these runs: their metrics, mean and std over them."""
    sums = [s.summary() for _, s in members]
    forg = [m["forgetting"] for m in sums]
    return Point(
        x, [r for r, _ in members],
        metrics.mean_std(m["aa"] for m in sums), metrics.mean_std(m["bwt"] for m in sums),
        metrics.mean_std(m["learning_accuracy"] for m in sums),
        metrics.mean_std(forg) if all(f is not None for f in forg) else None,  # type: ignore[arg-type]
    )  # fmt: skip


def series(
    runs: list[tuple[dict[str, Any], Score]],
    x_of: Callable[[dict[str, Any]], Any],
    x_keys: tuple[str, ...],
    what: str,
    config_keys: tuple[str, ...] = (),
) -> dict[str, list[Point]]:
    """Runs that differ in ``x_of`` (e.g. T) and agree on everything else but the seed: ``{series
    label: points sorted by x}``. A series is a (model, method) and the values of the other config
    keys that vary within it; only series with two or more x values are kept. ``x_keys`` (dotted
    suffixes after ``methods.<component>.``) and ``config_keys`` (whole dotted keys, e.g.
    ``train.lr``) are not counted as other keys."""

    def is_x(key: str) -> bool:
        return key in config_keys or any(key == f"methods.{c}.{k}" for c in _COMPONENTS for k in x_keys)

    by_method: dict[tuple[str, str], list[tuple[Any, dict[str, Any], Score]]] = defaultdict(list)
    for run, score in runs:
        x = x_of(run)
        if x is not None:
            by_method[(run["model"], method_label(run))].append((x, run, score))
    models = {m for m, _ in by_method}
    out: dict[str, list[Point]] = {}
    for (model, _), members in sorted(by_method.items()):
        keys = _varying([r for _, r, _ in members], is_x)
        groups: dict[tuple[str, ...], list[tuple[Any, dict[str, Any], Score]]] = defaultdict(list)
        for x, run, score in members:
            flat = flat_config(run)
            groups[tuple(flat.get(k, "-") for k in keys)].append((x, run, score))
        kept = {k: g for k, g in groups.items() if len({x for x, _, _ in g}) > 1}
        # a label names only the keys that tell the kept series of this method apart
        shown = [key for i, key in enumerate(keys) if len({k[i] for k in kept}) > 1]
        for group in kept.values():
            xs: dict[Any, list[tuple[dict[str, Any], Score]]] = defaultdict(list)
            for x, run, score in group:
                xs[x].append((run, score))
            name = label(group[0][1], shown) + (f" ({model})" if len(models) > 1 else "")
            out[name] = [point(x, xs[x]) for x in sorted(xs)]
    if not out:
        raise NoMatchingRuns(f"no runs that differ only in {what} (and seed): need one method at two or more values")
    return out


def sweep(runs: list[tuple[dict[str, Any], Score]]) -> dict[str, list[Point]]:
    """AA and BWT against ``methods.migu.threshold`` (or ``methods.random_update.threshold``)."""
    return series(runs, threshold_of, ("threshold",), "methods.migu.threshold")


def ablation(runs: list[tuple[dict[str, Any], Score]]) -> dict[str, list[Point]]:
    """AA and BWT per masked-layer choice (``methods.migu.layers``, ``include``, ``exclude``)."""
    return series(runs, component_of, _LAYER_KEYS, "methods.migu.layers/include/exclude")


def variant_keys(runs: list[dict[str, Any]]) -> list[str]:
    """Config keys that some method's runs set to different values (besides seed and order)."""
    methods: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        methods[(run["model"], method_label(run))].append(run)
    keys = {k for members in methods.values() for k in _varying(members, lambda k: k == "data.order")}
    return sorted(keys)


def groups(runs: list[tuple[dict[str, Any], Score]], by: tuple[str, ...]) -> dict[tuple[str, str], Point]:
    """Runs that differ only in their seed, grouped by (label, order): one point each, over seeds.
    A label is the method and the config keys that vary among that method's runs (and ``by``),
    led by the model's name when the runs are of several models (never one point of two models)."""
    methods: dict[tuple[str, str], list[tuple[dict[str, Any], Score]]] = defaultdict(list)
    for run, score in runs:
        methods[(run["model"], method_label(run))].append((run, score))
    several_models = len({model for model, _ in methods}) > 1
    out: dict[tuple[str, str], list[tuple[dict[str, Any], Score]]] = defaultdict(list)
    for (model, _), members in methods.items():
        keys = sorted({*variant_keys([r for r, _ in members]), *by})
        for run, score in members:
            name = f"{model} {label(run, keys)}" if several_models else label(run, keys)
            out[(name, order_of(run))].append((run, score))
    return {k: point(None, v) for k, v in sorted(out.items())}


def seed_groups(runs: list[tuple[dict[str, Any], Score]], by: tuple[str, ...]) -> dict[tuple[str, str], Point]:
    """Like ``groups``; an error unless some (method, order) has runs of two or more seeds."""
    found = groups(runs, by)
    if not any(len({r["seed"] for r in p.runs}) > 1 for p in found.values()):
        raise NoMatchingRuns("no method and order with runs of two or more seeds (a seed spread needs them)")
    return found


# -- task overlap of kept rows -------------------------------------------------------------------------

_ATTENTION = re.compile(r"attn|attention", re.IGNORECASE)


def default_layer(rows: Mapping[str, int]) -> str:
    """The first feed-forward layer of the last block, from layer names (in module order) and their
    row counts. A layer's block is its name up to its first numeric part (``encoder.layer.5``,
    ``model.layers.27``, ``decoder.block.23``); feed-forward layers are those in a block with no
    ``attn``/``attention`` in their name (LoRA's own ``lora_A``/``lora_B`` parts are skipped). The
    last block has the highest number (between stacks of equal depth, T5's encoder and decoder, the
    one listed last); its first FFN layer is the widest one (the up-projection to the FFN's inner
    size: ``intermediate.dense``, ``mlp.c_fc``, ``DenseReluDense.wi``), and between equally wide
    ones (Llama's ``gate_proj`` and ``up_proj``, gated T5's ``wi_0`` and ``wi_1``) the first by name."""
    found = []
    for position, (name, count) in enumerate(rows.items()):
        parts = name.split(".")
        digits = [i for i, p in enumerate(parts) if p.isdigit()]
        if not digits or any(_ATTENTION.search(p) for p in parts) or any(p.startswith("lora_") for p in parts):
            continue
        found.append((int(parts[digits[0]]), position, ".".join(parts[: digits[0] + 1]), count, name))
    if not found:
        raise ValueError(f"no feed-forward layer among {len(rows)} layers (e.g. {next(iter(rows), '-')}); "
                         "name one with --layer, or --layer mean")  # fmt: skip
    last = max(found, key=lambda f: (f[0], f[1]))[2]
    block = [f for f in found if f[2] == last]
    widest = max(f[3] for f in block)
    return min(f[4] for f in block if f[3] == widest)


def pick_layers(sizes: Mapping[str, int], layer: str, missing: str) -> list[str]:
    """The layers a kept-rows figure shows, of those with masks (``sizes``: rows per layer, in
    module order): ``auto`` (``default_layer``), ``mean`` (all) or one by name (else ``missing``)."""
    if layer == "auto":
        return [default_layer(sizes)]
    if layer == "mean":
        return list(sizes)
    if layer in sizes:
        return [layer]
    raise ValueError(f"{missing} (e.g. {', '.join(list(sizes)[:3])})")


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|A ∩ B| / |A ∪ B| of two row masks (NaN when both are empty)."""
    union = int(np.logical_or(a, b).sum())
    return float(np.logical_and(a, b).sum()) / union if union else float("nan")


def overlap_ratio(a: np.ndarray, b: np.ndarray) -> float:
    """|A ∩ B| / min(|A|, |B|): the share of the smaller set of updated rows that the other task
    updated too (1 when one set contains the other; NaN when either is empty). The paper's text
    available here does not define its overlap ratio; this is the definition used by migu."""
    smaller = min(int(a.sum()), int(b.sum()))
    return float(np.logical_and(a, b).sum()) / smaller if smaller else float("nan")


def kept_rows_method(run_dir: str | Path) -> str | None:
    """The method name under which a run folder saved ``kept_rows`` (``migu`` preferred), or None."""
    names = {i["method"] for i in read_index(Path(run_dir) / "artifacts")["items"] if i["name"] == "kept_rows"}
    return "migu" if "migu" in names else (min(names) if names else None)


@dataclass
class Overlap:
    """Pairwise overlap of the rows updated on each task (tasks that saved masks, in order)."""

    tasks: list[str]
    layer: str
    jaccard: np.ndarray
    ratio: np.ndarray


def overlap(run_dir: str | Path, layer: str = "auto", which: str = "ever") -> Overlap:
    """Jaccard and overlap ratio between the kept rows of every pair of tasks, for one layer
    (``auto``: ``default_layer``; a name) or the mean over the layers every task saved (``mean``).
    ``which``: ``ever`` (rows updated at any step of the task) or ``last`` (at its last step)."""
    if which not in ("ever", "last"):
        raise ValueError(f"--mask must be ever or last; got {which!r}")
    method = kept_rows_method(run_dir)
    if method is None:
        raise NoMatchingRuns(f"{run_dir} has no kept_rows artifacts")
    masks = kept_row_masks(run_dir, method)
    tasks = list(masks)
    common = [n for n in masks[tasks[0]] if all(n in masks[t] and which in masks[t][n] for t in tasks)]
    if not common:
        raise ValueError(f"{run_dir}: no layer has {which!r} masks in every task")
    sizes = {n: masks[tasks[0]][n][which].size for n in common}
    layers = pick_layers(sizes, layer, f"{run_dir}: no layer named {layer!r} in every task")
    n = len(tasks)
    jac, rat = np.zeros((len(layers), n, n)), np.zeros((len(layers), n, n))
    for li, name in enumerate(layers):
        for i, a in enumerate(tasks):
            for j, b in enumerate(tasks):
                x, y = masks[a][name][which].reshape(-1), masks[b][name][which].reshape(-1)
                jac[li, i, j], rat[li, i, j] = jaccard(x, y), overlap_ratio(x, y)
    return Overlap(tasks, layers[0] if len(layers) == 1 else f"mean of {len(layers)} layers",
                   jac.mean(axis=0), rat.mean(axis=0))  # fmt: skip
