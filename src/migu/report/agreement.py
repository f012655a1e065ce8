"""Do two ways of choosing rows pick the same rows? The ``agreement`` figure of ``migu plot``.

Per (model, order, seed), every run with ``kept_rows`` artifacts (MIGU, random rows, gradient or
Fisher scores) is compared with the group's reference, the run whose rows MIGU's magnitude chose
(else the first by name): per task, the Jaccard index between the rows the two updated on that
task, for one layer (``--layer``, as the overlap figure) or the mean over the layers both saved.
Beside it, chance: the Jaccard index two sets of those sizes drawn at random would have, taken as
E|A∩B| / E|A∪B| = ab/n / (a + b - ab/n) for sets of a and b of n rows (within a fraction of a
percent of the exact expectation at the sizes here). The two runs train apart, so this measures
whether the scores agree along their own trajectories, not on one shared model. For scores chosen
anew at each step (magnitude, random, gradient) compare the rows of the task's last step
(``--mask last``): the rows ever updated cover most of a layer, where any two choices agree
exactly as much as chance (measured on the fair queue's runs: 0.72 against 0.72).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import figdata
from .drawing import SIZES, plt, save, slug, write_csv
from .figdata import NoMatchingRuns, Score
from .runs import order_of


@dataclass
class Agreement:
    """Per task both runs saved masks of: the Jaccard index of their rows, and chance's."""

    layer: str
    tasks: list[str]
    jaccard: list[float]
    chance: list[float]


def chance_jaccard(a: int, b: int, n: int) -> float:
    """The Jaccard index of random row sets of sizes ``a`` and ``b`` among ``n`` (ratio of the
    expected intersection and union; NaN when both are empty)."""
    both = a * b / n if n else 0.0
    union = a + b - both
    return both / union if union > 0 else float("nan")


def agreement(run_a: str | Path, run_b: str | Path, layer: str = "auto", which: str = "ever") -> Agreement:
    """The per-task agreement of two run folders' kept rows (see the module docstring)."""
    if which not in ("ever", "last"):
        raise ValueError(f"--mask must be ever or last; got {which!r}")
    masks = []
    for run_dir in (run_a, run_b):
        method = figdata.kept_rows_method(run_dir)
        if method is None:
            raise NoMatchingRuns(f"{run_dir} has no kept_rows artifacts")
        masks.append(figdata.kept_row_masks(run_dir, method))
    first, second = masks
    tasks = [t for t in first if t in second]
    names = first[tasks[0]] if tasks else {}
    common = [n for n in names if all(which in m[t].get(n, {}) for m in masks for t in tasks)]
    if not common:
        raise ValueError(f"{run_a} and {run_b}: no task and layer with {which!r} masks in both")
    sizes = {n: first[tasks[0]][n][which].size for n in common}
    layers = figdata.pick_layers(sizes, layer, f"{run_a}: no layer named {layer!r} in both runs")
    jaccard, chance = [], []
    for task in tasks:
        pairs = [(first[task][n][which].reshape(-1), second[task][n][which].reshape(-1)) for n in layers]
        jaccard.append(float(np.mean([figdata.jaccard(x, y) for x, y in pairs])))
        chance.append(float(np.mean([chance_jaccard(int(x.sum()), int(y.sum()), x.size) for x, y in pairs])))
    name = layers[0] if len(layers) == 1 else f"mean of {len(layers)} layers"
    return Agreement(name, tasks, jaccard, chance)


def _is_reference(run: dict[str, Any]) -> bool:
    return "migu" in run["method"].split("+") and not figdata.observes(run)


def agreement_figures(runs: list[tuple[dict[str, Any], Score]], out: Path, layer: str, which: str) -> list[Path]:
    """One panel per (model, order, seed) and masked layers with two or more runs that saved kept
    rows: each run's agreement with the reference run per task (solid), and chance for the same
    sizes (dotted)."""
    found: dict[tuple[str, str, Any, frozenset[str]], list[dict[str, Any]]] = defaultdict(list)
    for run, _ in runs:
        run_dir = Path(run["_path"]).parent
        method = figdata.kept_rows_method(run_dir)
        if method is not None:  # runs masking other layers (LoRA's, the full weights') are apart
            layers = frozenset(next(iter(figdata.kept_row_masks(run_dir, method).values())))
            found[(run["model"], order_of(run), run["seed"], layers)].append(run)
    groups = {key: members for key, members in found.items() if len(members) > 1}
    if not groups:
        raise NoMatchingRuns("no model, order and seed has two runs with kept_rows artifacts of the same layers")
    paths, taken = [], set()
    for (model, order, seed, _), members in sorted(groups.items(), key=lambda kv: str(kv[0][:3])):
        members.sort(key=lambda r: (not _is_reference(r), figdata.method_label(r)))
        reference, others = members[0], members[1:]
        fig, ax = plt.subplots(figsize=SIZES["agreement"], layout="constrained")
        rows = []
        for color, run in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"] * len(others), others, strict=False):
            found_ = agreement(Path(reference["_path"]).parent, Path(run["_path"]).parent, layer, which)
            label = f"{figdata.method_label(run)} vs {figdata.method_label(reference)}"
            x = range(len(found_.tasks))
            ax.plot(x, found_.jaccard, "o-", color=color, label=label)
            ax.plot(x, found_.chance, ":", color=color, label=f"chance for those sizes ({figdata.method_label(run)})")
            ax.set_xticks(list(x), found_.tasks, rotation=30, ha="right")
            rows += [[figdata.method_label(reference), figdata.method_label(run), found_.layer, t, j, c]
                     for t, j, c in zip(found_.tasks, found_.jaccard, found_.chance, strict=True)]  # fmt: skip
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"Jaccard of the rows updated ({which})")
        ax.set_title(f"Do the row choices agree? {model} / {order} / seed {seed}\n{rows[0][2]}", fontsize=10)
        ax.legend(fontsize=7)
        stem = slug(f"{model}_{order}_seed{seed}")
        stem = stem if stem not in taken else slug(f"{model}_{order}_seed{seed}_{figdata.method_label(reference)}")
        taken.add(stem)
        path = out / f"agreement_{stem}.png"
        write_csv(path.with_suffix(".csv"), ["reference", "method", "layer", "task", "jaccard", "chance"], rows)
        paths.append(save(fig, path))
    return paths
