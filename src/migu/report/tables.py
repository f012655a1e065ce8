"""Markdown tables from results files: matrices, AA/BWT per method (mean and std over seeds),
paired differences against a baseline method, the effect of adding one method to every other
(Table 2 of the paper: each CL method with and without MIGU), per-task forgetting.

Every table is of one score (``score``: accuracy by default) read from the run's
``score_matrices`` with its direction; results files older than score matrices hold only
``accuracy_matrix`` and are read as an accuracy score matrix. A metric a schedule leaves out
(forgetting under ``data.evaluate_tasks=diagonal``) prints as "–"."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .. import metrics

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


def load_results(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Every results file at or below ``paths``; a file that is not one is a one-line error
    naming it and what to do."""
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
        run["_path"] = str(path)
        runs.append(run)
    return runs


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


def _num(value: float | None, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


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
    if "_effective" not in run:
        from ..methods.registry import effective_method_settings

        try:  # JSON round trip: tuples read as the lists a results file holds
            settings = effective_method_settings(run["method"], run.get("config", {}).get("methods"))
            run["_effective"] = json.loads(json.dumps(settings))
        except ValueError:  # a method or setting this version no longer knows
            run["_effective"] = {}
    method = run["_effective"].get(parts[1], {})
    return str(method[parts[2]]) if parts[2] in method else "-"


def label_of(run: dict[str, Any], by: tuple[str, ...] = ()) -> str:
    """The method, followed by the values of the ``by`` config keys that tell variants apart."""
    values = [f"{k}={v}" for k in by if (v := config_value(run, k)) != "-"]
    return run["method"] + (" [" + ", ".join(values) + "]" if values else "")


def varying_keys(runs: list[dict[str, Any]], by: tuple[str, ...]) -> tuple[str, ...]:
    """The ``by`` keys that take more than one value over ``runs`` (unset counts as a value, so
    that a run setting a key is never merged with one leaving it at its default)."""
    return tuple(k for k in by if len({config_value(r, k) for r in runs}) > 1)


def format_matrix(run: dict[str, Any], score: str | None = None) -> str:
    """One score matrix as a table (rows: after training on; columns: task), with AA, BWT and
    forgetting under it; by default accuracy, else the run's first per-task score."""
    score = choose_score([run], score)
    entry = score_matrices(run)[score]
    names = entry.get("columns") or run["sequence"]
    spec = ".1f" if score == ACCURACY else ".4g"
    head = "| after | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
    rows = []
    for i, row in enumerate(entry["matrix"]):
        label = "(start)" if i == 0 else run["sequence"][i - 1]
        rows.append(f"| {label} | " + " | ".join(_num(v, spec) for v in row) + " |")
    m = summary_of(run, score)
    return (
        head + "\n".join(rows) + f"\n\nAA {_num(m['aa'])}, BWT {_num(m['bwt'])}, forgetting {_num(m['forgetting'])}\n"
    )


def _eval_seconds(timing: dict[str, Any]) -> float:
    """Evaluation seconds of a timings entry: at the task's end and, for per-epoch curves, at its
    epoch ends (``epoch_end_seconds``, which also holds the epoch checkpoints' saving)."""
    return float(timing.get("eval_seconds", 0) + timing.get("epoch_end_seconds", 0))


def _pm(values: Sequence[float | None]) -> str:
    """Mean ± std, "–" if any value is missing (a metric the schedule leaves out)."""
    if not values or any(v is None for v in values):
        return "–"
    mean, std = metrics.mean_std(values)  # type: ignore[arg-type]
    return f"{mean:.2f} ± {std:.2f}" if len(values) > 1 else f"{mean:.2f}"


def summary_table(runs: list[dict[str, Any]], by: tuple[str, ...] = (), score: str = ACCURACY) -> str:
    """One row per (model, order, method variant): AA, BWT, forgetting, learning accuracy, seeds, minutes."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[(run["model"], order_of(run), label_of(run, by))].append(run)
    for run in runs:
        groups[(run["model"], "all orders", label_of(run, by))].append(run)
    learned = "new-task acc." if score == ACCURACY else f"new-task {score}"
    lines = [f"| model | order | method | AA | BWT | forgetting | {learned} | seeds | minutes/run |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    orders = {order_of(r) for r in runs}
    for (model, order, method), members in sorted(groups.items()):
        if order == "all orders" and len(orders) < 2:
            continue
        ms = [summary_of(r, score) for r in members]
        minutes = [sum(t.get("seconds", 0) + _eval_seconds(t) for t in r.get("timings", [])) / 60 for r in members]
        lines.append(
            f"| {model} | {order} | {method} | {_pm([m['aa'] for m in ms])} | {_pm([m['bwt'] for m in ms])} | "
            f"{_pm([m['forgetting'] for m in ms])} | {_pm([m['learning_accuracy'] for m in ms])} | "
            f"{len(members)} | {sum(minutes) / len(minutes):.1f} |"
        )
    return "\n".join(lines) + "\n"


def _baseline_for(run: dict[str, Any], bases: list[dict[str, Any]], by: tuple[str, ...]) -> dict[str, Any] | None:
    """The baseline run to pair with: the one with the same ``by`` values, else the only one."""
    same = [b for b in bases if all(config_value(b, k) == config_value(run, k) for k in by)]
    if len(same) == 1:
        return same[0]
    return bases[0] if len(bases) == 1 else None


def _partners(
    runs: list[dict[str, Any]], partner_of: Callable[[str], str | None], by: tuple[str, ...]
) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    """(run, its partner run or None) for every run whose method ``partner_of`` maps to a partner
    method: the partner's run on the same model, order and seed (and ``by`` values, if it must)."""
    index: dict[tuple[str, str, str, Any], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        index[(r["model"], r["method"], order_of(r), r["seed"])].append(r)
    for run in runs:
        method = partner_of(run["method"])
        if method is not None:
            yield run, _baseline_for(run, index.get((run["model"], method, order_of(run), run["seed"]), []), by)


def paired_table(runs: list[dict[str, Any]], baseline: str, by: tuple[str, ...] = (), score: str = ACCURACY) -> str:
    """Per method variant: AA and BWT minus the baseline's on the same (model, order, seed)."""
    diffs: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run, base in _partners(runs, lambda method: None if method == baseline else baseline, by):
        if base is None:
            continue
        a, b = summary_of(run, score), summary_of(base, score)
        d = diffs[(run["model"], label_of(run, by))]
        d["aa"].append(a["aa"] - b["aa"])
        d["bwt"].append(a["bwt"] - b["bwt"])
        d["first"].append(a["final_accuracy"][0] - b["final_accuracy"][0])
    if not diffs:
        return ""
    first = "acc." if score == ACCURACY else score
    lines = [
        f"| model | method | ΔAA vs {baseline} | ΔBWT | Δ first-task final {first} | pairs |",
        "|---|---|---|---|---|---|",
    ]
    for (model, method), d in sorted(diffs.items()):
        lines.append(f"| {model} | {method} | {_pm(d['aa'])} | {_pm(d['bwt'])} | {_pm(d['first'])} | {len(d['aa'])} |")
    return "\n".join(lines) + "\n"


def without(method: str, component: str) -> str | None:
    """The method spec with ``component`` removed (``lora+replay+migu`` -> ``lora+replay``), or None
    if the spec lacks it or is nothing else."""
    parts = method.split("+")
    if component not in parts or len(parts) == 1:
        return None
    return "+".join(p for p in parts if p != component)


def effect_table(runs: list[dict[str, Any]], component: str, by: tuple[str, ...] = (), score: str = ACCURACY) -> str:
    """Every run whose method includes ``component`` next to the run of the same model, order and
    seed without it (each with its own chosen rate): AA and BWT of both and their paired difference,
    over all orders and seeds. Runs without a partner (or with several that ``by`` cannot tell
    apart) are counted under the table."""
    pairs: dict[tuple[str, str, str], list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    unpaired: dict[str, int] = defaultdict(int)
    for run, base in _partners(runs, lambda method: without(method, component), by):
        if base is None:
            unpaired[label_of(run, by)] += 1
        else:
            pairs[(run["model"], label_of(base, by), label_of(run, by))].append((base, run))
    if not pairs and not unpaired:
        return ""
    lines = [f"| model | without {component} | with | AA | AA with | ΔAA | BWT | BWT with | ΔBWT | pairs |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (model, base_label, label), members in sorted(pairs.items()):
        b = [summary_of(x, score) for x, _ in members]
        w = [summary_of(y, score) for _, y in members]
        aa = [y["aa"] - x["aa"] for x, y in zip(b, w, strict=True)]
        bwt = [y["bwt"] - x["bwt"] for x, y in zip(b, w, strict=True)]
        lines.append(
            f"| {model} | {base_label} | {label} | {_pm([x['aa'] for x in b])} | {_pm([y['aa'] for y in w])} | "
            f"{_pm(aa)} | {_pm([x['bwt'] for x in b])} | {_pm([y['bwt'] for y in w])} | {_pm(bwt)} | {len(members)} |"
        )
    if unpaired:
        lines.append("\nWithout a partner run (none, or several that --by does not tell apart): "
                     + ", ".join(f"{k} ({v})" for k, v in sorted(unpaired.items())))  # fmt: skip
    return "\n".join(lines) + "\n"


def timing_table(runs: list[dict[str, Any]], by: tuple[str, ...] = ()) -> str:
    """One row per run: training seconds of the first task (unmasked by MIGU's default) and of the
    later tasks, the median seconds per optimizer step over the later tasks, evaluation seconds
    (epoch-end evaluations and checkpoints included)."""
    lines = ["| model | order | method | seed | train s, first task | train s, later tasks "
             "| median step s, later tasks | eval s | minutes |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for run in sorted(runs, key=lambda r: (r["model"], order_of(r), label_of(r, by), r["seed"])):
        trained = [t for t in run.get("timings", []) if t.get("task") is not None]
        if not trained:
            continue
        later = trained[1:]
        steps = [t["median_step_seconds"] for t in later if "median_step_seconds" in t]
        step = f"{statistics.median(steps):.2f}" if steps else "-"
        evals = sum(_eval_seconds(t) for t in run["timings"])
        total = sum(t.get("seconds", 0) for t in trained) + evals
        lines.append(
            f"| {run['model']} | {order_of(run)} | {label_of(run, by)} | {run['seed']} | {trained[0]['seconds']:.1f} | "
            f"{sum(t['seconds'] for t in later):.1f} | {step} | {evals:.1f} | {total / 60:.1f} |"
        )
    return "\n".join(lines) + "\n"


def flat_config(run: dict[str, Any]) -> dict[str, str]:
    """The run's config as dotted keys (``methods.migu.threshold``) -> values as text."""
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = json.dumps(node) if isinstance(node, list | tuple) else str(node)

    walk(run.get("config", {}), "")
    return out


def _sequence_tables(runs: list[dict[str, Any]], baseline: str | None, by: tuple[str, ...],
                     effect_of: tuple[str, ...], score: str, lacking: list[dict[str, Any]]) -> list[str]:  # fmt: skip
    """The summary, paired differences against ``baseline`` and with/without each ``effect_of``."""
    if score == ACCURACY:
        parts = ["## Summary (mean ± std over seeds)\n", summary_table(runs, by)]
    else:
        direction = "higher" if score_matrices(runs[0])[score].get("higher_is_better", True) else "lower"
        parts = [
            f"## Summary of {score} ({direction} is better; mean ± std over seeds)\n",
            summary_table(runs, by, score),
        ]
    if lacking:
        parts.append(f"\n{len(lacking)} run(s) without the score {score} left out: " + ", ".join(
            sorted({r['method'] for r in lacking})) + "\n")  # fmt: skip
    if baseline:
        paired = paired_table(runs, baseline, by, score)
        if paired:
            parts += [f"\n## Paired differences against {baseline} (same order and seed; mean ± std)\n", paired]
    for component in effect_of:
        effect = effect_table(runs, component, by, score)
        if effect:
            parts += [f"\n## With and without {component} (paired: same order and seed; mean ± std)\n", effect]
    return parts


def report_markdown(
    runs: list[dict[str, Any]],
    baseline: str | None = "finetune",
    matrices: bool = False,
    by: tuple[str, ...] = (),
    timings: bool = False,
    effect_of: tuple[str, ...] = (),
    score: str | None = None,
) -> str:
    """Summary table, paired differences against ``baseline`` and, optionally, every matrix.

    ``by``: dotted config keys (``train.lr``, ``methods.migu.threshold``) whose values split a
    method into variants, for sweeps and ablations. Labels show only the keys that vary over
    ``runs``, and only where a run sets them. ``score``: the score matrix the tables are of
    (``choose_score``: accuracy by default); runs without it are counted under the summary."""
    score = choose_score(runs, score)
    lacking = [r for r in runs if score not in score_matrices(r)]
    runs = [r for r in runs if score in score_matrices(r)]
    by = varying_keys(runs, by)
    # one task with per-epoch curves (instruction tuning): AA, BWT and forgetting are undefined
    # there (a forgetting of 0.00 would read as "nothing forgotten"); its curves say what it learned
    one_task = [r for r in runs if len(r.get("sequence") or ()) == 1 and r.get("curves")]
    sequences = [r for r in runs if r not in one_task]
    if sequences:
        parts = _sequence_tables(sequences, baseline, by, effect_of, score, lacking)
    else:
        parts = ["## One-task runs\n\nAA, BWT and forgetting need a sequence of several tasks: what these runs "
                 "learned and what they kept is in their curves below.\n"]  # fmt: skip
    if one_task and sequences:
        parts.append(f"\n{len(one_task)} one-task run(s) with curves are left out of the tables above.\n")
    from .domains import domain_sections  # (domains builds on this module)

    parts += domain_sections(runs, by, timings)
    from .curve_tables import curve_sections

    parts += curve_sections(runs, by, effect_of)
    if timings:
        parts += ["\n## Wall time per run\n", timing_table(runs, by)]
    if matrices:
        title = "Accuracy" if score == ACCURACY else score
        parts.append(f"\n## {title} matrices (rows: after training on; columns: task)\n")
        for run in sorted(runs, key=lambda r: (r["model"], order_of(r), label_of(r, by), r["seed"])):
            parts.append(f"\n### {run['model']} / {order_of(run)} / {label_of(run, by)} / seed {run['seed']}\n\n")
            parts.append(format_matrix(run, score))
    return "".join(parts)
