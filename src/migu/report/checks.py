"""Checks of a report's options against the runs it is given, before any table is printed."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from .runs import ACCURACY, config_value, flat_config, label_of, order_of, score_matrices, varying_keys

_NOT_SETTINGS = {"name", "output_dir", "progress", "data.root"}  # (where, not how: a run may move)


def check_options(
    runs: list[dict[str, Any]],
    baseline: str | None = None,
    by: tuple[str, ...] = (),
    effect_of: tuple[str, ...] = (),
    score: str = ACCURACY,
) -> None:
    """A ``--baseline``, ``--by`` or ``--effect-of`` that matches no run is a ValueError naming
    the option (a typo would otherwise print a table without the part that was asked for); so are
    runs of the ``score`` that ``by`` leaves indistinguishable but for being seeds."""
    methods = sorted({r["method"] for r in runs})
    if baseline and baseline not in methods:
        raise ValueError(f"--baseline {baseline}: no run has this method; methods: {', '.join(methods)}")
    for key in by:
        if all(config_value(r, key) == "-" for r in runs):
            raise ValueError(
                f"--by {key}: no run sets this config key (keys look like train.lr, methods.migu.threshold)"
            )
    scored = [r for r in runs if score in score_matrices(r)]
    _check_no_twins(scored, varying_keys(scored, by))
    components = sorted({c for m in methods for c in m.split("+")})
    for component in effect_of:
        if component not in components:
            raise ValueError(
                f"--effect-of {component}: no run's method includes it; components: {', '.join(components)}"
            )


def _check_no_twins(runs: list[dict[str, Any]], by: tuple[str, ...]) -> None:
    """Runs of one method, model, order and seed would be averaged as if they were seeds: a
    ValueError naming the config keys that tell them apart (for ``--by``)."""
    twins: dict[tuple[str, str, str, Any], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        twins[(run["model"], label_of(run, by), order_of(run), run["seed"])].append(run)
    for (model, label, order, seed), group in twins.items():
        if len(group) > 1:
            flat = [flat_config(r) for r in group]
            keys = sorted(k for k in set().union(*flat)
                          if k not in _NOT_SETTINGS and len({f.get(k) for f in flat}) > 1)  # fmt: skip
            differ = f"they differ in {', '.join(keys)}: add --by KEY" if keys else "the same run given twice?"
            raise ValueError(f"{len(group)} runs of {label} ({model}, {order}, seed {seed}) would be averaged as "
                             f"seeds; {differ}")  # fmt: skip
