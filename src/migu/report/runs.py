"""Reading results files: finding and checking them, a run's score matrices and summaries, and
the labels a report prints for a run (method, order, config values that tell variants apart)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .. import metrics
from ..schema import check_schema

REQUIRED = ("model", "method", "seed", "sequence", "accuracy_matrix")
"""The keys of a results file that scores accuracy (every file written before score matrices)."""
KEYS = ("model", "method", "seed", "sequence")
"""The keys every results file has, besides ``accuracy_matrix`` or ``score_matrices``."""
ACCURACY = "accuracy"


def find_results(paths: Iterable[str | Path]) -> list[Path]:
    """Every ``results.json`` at or below the given files/folders, sorted."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if p.is_file():
            found.add(p)
        elif p.is_dir():
            found.update(p.rglob("results.json"))
        else:
            raise FileNotFoundError(f"no results file or folder at {p}")
    if not found:
        raise FileNotFoundError(f"no results.json under {', '.join(map(str, paths))}")
    return sorted(found)


SettingsOf = Callable[[str, Any], dict[str, dict[str, Any]]]
"""``(method spec, its config's methods section) -> {method: settings}``, defaults included: what
a run that recorded no ``method_settings`` (files before they were recorded) ran with. The CLI
passes ``migu.methods.registry.effective_method_settings``; the report imports no method code."""


def load_results(paths: Iterable[str | Path], settings_of: SettingsOf | None = None) -> list[dict[str, Any]]:
    """Every results file at or below ``paths``; a file that is not one is a one-line error
    naming it and what to do. ``settings_of`` fills in the effective method settings of files that
    did not record them (``with_effective_settings``)."""
    runs = []
    for path in find_results(paths):
        try:
            run = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(
                f"{path} is not valid JSON ({err}): a run writes it whole when it finishes, so it was "
                "damaged or written by something else; delete it and rerun that run, or leave its folder out"
            ) from None
        if not isinstance(run, dict):
            raise ValueError(f"{path} is not a migu results file (not a JSON object); leave it out of the paths")
        missing = [k for k in KEYS if k not in run]
        if not ("accuracy_matrix" in run or "score_matrices" in run):
            missing.append("accuracy_matrix or score_matrices")
        if missing:
            raise ValueError(f"{path} is not a migu results file: missing {missing}; leave it out of the paths")
        check_schema(run, path)
        run["_path"] = str(path)
        with_end_points_as_curves(run)
        runs.append(run)
    if settings_of is not None:
        with_effective_settings(runs, settings_of)
    return runs


def with_end_points_as_curves(run: dict[str, Any]) -> dict[str, Any]:
    """A one-task run evaluated only before and after training (``data.evaluate_every: task``)
    gets those two evaluations as its curves (epoch 0 and its last epoch), so that it is tabled
    and drawn as the per-epoch runs are: AA and BWT mean nothing for one task. Other runs, and
    runs that have curves, are left as they are. Returns ``run``."""
    matrices = score_matrices(run)
    if len(run.get("sequence") or ()) != 1 or run.get("curves") or not matrices:
        return run
    if any(len(entry.get("matrix") or ()) != 2 for entry in matrices.values()):
        return run
    epochs = int((run.get("config") or {}).get("train", {}).get("epochs", 1))
    run["curves"] = {
        "points": [{"task_index": 0, "epoch": 0}, {"task_index": 0, "epoch": epochs}],
        "scores": {
            name: {"higher_is_better": entry.get("higher_is_better", True),
                   "columns": list(entry.get("columns") or run["sequence"]),
                   "values": [list(row) if row is not None else None for row in entry["matrix"]]}
            for name, entry in matrices.items()
        },
    }  # fmt: skip
    return run


def with_effective_settings(runs: Iterable[dict[str, Any]], settings_of: SettingsOf) -> None:
    """Give each run without recorded ``method_settings`` the settings it ran with by default
    (``run["_effective"]``; ``{}`` where this version no longer knows a method or setting)."""
    for run in runs:
        if "method_settings" in run or "_effective" in run:
            continue
        try:  # JSON round trip: tuples read as the lists a results file holds
            settings = settings_of(run["method"], run.get("config", {}).get("methods"))
            run["_effective"] = json.loads(json.dumps(settings, default=str))
        except ValueError:
            run["_effective"] = {}


def score_matrices(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{score: {"higher_is_better": bool, "matrix": [[...]], ...}}`` of a run; a file written
    before score matrices has only its accuracy matrix."""
    found = run.get("score_matrices") or {}
    if ACCURACY in found or "accuracy_matrix" not in run:
        return found
    return {ACCURACY: {"higher_is_better": True, "matrix": run["accuracy_matrix"]}, **found}


def _per_task(run: dict[str, Any], entry: dict[str, Any]) -> bool:
    """A score matrix over the run's tasks (not a suite's own columns)."""
    return entry.get("columns") in (None, run["sequence"])


def choose_score(runs: list[dict[str, Any]], name: str | None = None) -> str:
    """``name`` if some run has it (else a ValueError listing the scores); by default accuracy,
    or else the first per-task score matrix of the runs."""
    available: dict[str, None] = {}
    for run in runs:
        available.update(dict.fromkeys(score_matrices(run)))
    if name is not None:
        if name not in available:
            raise ValueError(f"--score {name}: no run has this score; scores: {', '.join(available) or 'none'}")
        return name
    if ACCURACY in available:
        return ACCURACY
    per_task = [n for r in runs for n, e in score_matrices(r).items() if _per_task(r, e)]
    return per_task[0] if per_task else next(iter(available))


def summary_of(run: dict[str, Any], score: str = ACCURACY) -> dict[str, Any]:
    """``metrics.summary`` of one of the run's score matrices, with the score's direction."""
    cache = run.setdefault("_summaries", {})
    if score not in cache:
        entry = score_matrices(run)[score]
        try:
            cache[score] = metrics.summary(entry["matrix"], bool(entry.get("higher_is_better", True)))
        except ValueError as err:
            where = run.get("_path", run["method"])
            raise ValueError(f"{where}: score {score!r} has no AA/BWT ({err})") from None
    return cache[score]


def order_of(run: dict[str, Any]) -> str:
    order = run.get("config", {}).get("data", {}).get("order")
    return order if isinstance(order, str) else " > ".join(run["sequence"])


def config_value(run: dict[str, Any], key: str) -> str:
    """A dotted config key of a run (``train.lr``, ``methods.migu.threshold``), as text; "-" if unset.

    A method setting is read from the effective settings the run records (``method_settings``),
    else from its config; one neither records (files written before ``method_settings``) is the
    default for the run's combination of methods, e.g. MIGU's threshold from the paper's table
    (0.4 with replay)."""
    parts = key.split(".")
    recorded = run.get("method_settings", {})
    if len(parts) == 3 and parts[0] == "methods" and parts[2] in recorded.get(parts[1], {}):
        return str(recorded[parts[1]][parts[2]])  # the effective settings a run records
    value: Any = run.get("config", {})
    for part in parts:
        if not isinstance(value, dict) or part not in value:
            return _default_setting(run, key)
        value = value[part]
    return str(value)


def _default_setting(run: dict[str, Any], key: str) -> str:
    parts = key.split(".")
    if len(parts) != 3 or parts[0] != "methods" or parts[1] not in run["method"].split("+"):
        return "-"
    method = run.get("_effective", {}).get(parts[1], {})
    return str(method[parts[2]]) if parts[2] in method else "-"


def label_of(run: dict[str, Any], by: tuple[str, ...] = ()) -> str:
    """The method, followed by the values of the ``by`` config keys that tell variants apart."""
    values = [f"{k}={v}" for k in by if (v := config_value(run, k)) != "-"]
    return run["method"] + (" [" + ", ".join(values) + "]" if values else "")


def varying_keys(runs: list[dict[str, Any]], by: tuple[str, ...]) -> tuple[str, ...]:
    """The ``by`` keys that take more than one value over ``runs`` (unset counts as a value, so
    that a run setting a key is never merged with one leaving it at its default)."""
    return tuple(k for k in by if len({config_value(r, k) for r in runs}) > 1)


def flat_config(run: dict[str, Any], empty_sections: bool = False) -> dict[str, str]:
    """The run's config as dotted keys (``methods.migu.threshold``) -> values as text; with
    ``empty_sections``, an empty section is a key of its own with the value ``"{}"``."""
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and (node or not empty_sections):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = (
                "{}" if isinstance(node, dict) else (json.dumps(node) if isinstance(node, list | tuple) else str(node))
            )

    walk(run.get("config", {}), "")
    return out


def parse_mean_of(spec: str) -> tuple[str, tuple[str, ...]]:
    """``NAME=a,b,c`` -> (NAME, (a, b, c)); a one-line error otherwise."""
    name, _, columns = spec.partition("=")
    parts = tuple(c.strip() for c in columns.split(",") if c.strip())
    if not name.strip() or len(parts) < 2:
        raise ValueError(f"--mean-of {spec!r}: write NAME=COLUMN,COLUMN[,...], e.g. "
                         "paper3=hellaswag,winogrande,arc_challenge")  # fmt: skip
    return name.strip(), parts


def add_mean_column(run: dict[str, Any], name: str, columns: tuple[str, ...]) -> int:
    """Append a column ``name``, the mean of ``columns``, to every suite score of ``run`` (per-epoch
    curves and score-matrix rows) that has all of them, e.g. the paper's three-task general-ability
    mean beside the suite's own mean over every task. Returns how many scores got it."""
    added = 0
    tables = [(e, "values") for e in run.get("curves", {}).get("scores", {}).values()]
    tables += [(e, "matrix") for e in run.get("score_matrices", {}).values() if e.get("columns")]
    for entry, key in tables:
        cols = list(entry.get("columns") or [])
        if name in cols or not all(c in cols for c in columns):
            continue
        index = [cols.index(c) for c in columns]
        rows = []
        for row in entry[key]:
            picked = [row[i] for i in index]
            rows.append([*row, None if None in picked else sum(picked) / len(picked)])
        entry["columns"], entry[key] = [*cols, name], rows
        added += 1
    return added
