"""Markdown tables from results files: matrices, AA/BWT per method (mean and std over seeds),
paired differences against a baseline method, the effect of adding one method to every other
(Table 2 of the paper: each CL method with and without MIGU), per-task forgetting.

Every table is of one score (``score``: accuracy by default) read from the run's
``score_matrices`` with its direction; results files older than score matrices hold only
``accuracy_matrix`` and are read as an accuracy score matrix. A metric a schedule leaves out
(forgetting under ``data.evaluate_tasks=diagonal``) prints as "–"."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from .pairing import Interval, Pair, interval, partners, pm, row_key, shared_starts, unit_of, without
from .runs import (
    ACCURACY,
    choose_score,
    label_of,
    order_of,
    score_matrices,
    summary_of,
    varying_keys,
)


def _num(value: float | None, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


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


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def summary_table(runs: list[dict[str, Any]], by: tuple[str, ...] = (), score: str = ACCURACY) -> str:
    """One row per (model, order, method variant): AA, BWT, forgetting, learning accuracy, runs
    (the seeds), minutes; and one over all of a method variant's orders where it ran several ("all
    N orders": mean ± std over every run, seeds and orders)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[(run["model"], order_of(run), label_of(run, by))].append(run)
    orders: dict[tuple[str, str], set[str]] = defaultdict(set)
    for model, order, method in list(groups):
        orders[(model, method)].add(order)
    for run in runs:
        covered = orders[(run["model"], label_of(run, by))]
        if len(covered) > 1:
            groups[(run["model"], f"all {len(covered)} orders", label_of(run, by))].append(run)
    learned = "new-task acc." if score == ACCURACY else f"new-task {score}"
    lines = [f"| model | order | method | AA | BWT | forgetting | {learned} | runs | minutes/run |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (model, order, method), members in sorted(groups.items()):
        ms = [summary_of(r, score) for r in members]
        minutes = [sum(t.get("seconds", 0) + _eval_seconds(t) for t in r.get("timings", [])) / 60 for r in members]
        lines.append(
            f"| {model} | {order} | {method} | {pm([m['aa'] for m in ms])} | {pm([m['bwt'] for m in ms])} | "
            f"{pm([m['forgetting'] for m in ms])} | {pm([m['learning_accuracy'] for m in ms])} | "
            f"{len(members)} | {sum(minutes) / len(minutes):.1f} |"
        )
    return "\n".join(lines) + "\n"


def _ci(pairs: list[Pair], values: list[float | None]) -> tuple[str, Interval | None]:
    """The t-based 95% interval of paired differences over their independent units ("–" when a
    value is missing or there are fewer than two units)."""
    if not values or any(v is None for v in values):
        return "–", None
    found = interval(pairs, values)  # type: ignore[arg-type]
    return found.text(), found


def _count(pairs: list[Pair]) -> str:
    """ "n", or "n (k independent)" when some pairs share training (``pairing.units``)."""
    k = len({unit_of(p) for p in pairs})
    return str(len(pairs)) if k == len(pairs) else f"{len(pairs)} ({k} independent)"


def _protocol(key: tuple[str, str]) -> str:
    return key[0] or "–"


def _shared_note(pairs: list[Pair]) -> str:
    shared = shared_starts(pairs)
    if not shared:
        return ""
    return (
        "\nPairs that share their first tasks (same seed) train identically until their orders part: each such "
        "group counts as one independent unit in the intervals: " + "; ".join(shared) + ".\n"
    )


def paired_table(runs: list[dict[str, Any]], baseline: str, by: tuple[str, ...] = (), score: str = ACCURACY) -> str:
    """Per method variant, protocol and rates: AA and BWT minus the baseline's on the same model,
    tasks and seed in the same setting (``pairing.partners``), mean ± std over the pairs with a
    t-based 95% interval over the independent units, and the rates ("baseline's / the variant's"
    where they differ: pairs of other rates are another row)."""
    members: dict[tuple[str, tuple[str, str], str], list[Pair]] = defaultdict(list)
    unpaired: dict[str, int] = defaultdict(int)
    for run, base in partners(runs, lambda method: None if method == baseline else baseline, by):
        if base is not None:
            members[(run["model"], row_key((base, run)), label_of(run, by))].append((base, run))
        else:
            unpaired[label_of(run, by)] += 1
    if not members:
        return ""
    first = "acc." if score == ACCURACY else score
    lines = [
        f"| model | protocol | method | ΔAA vs {baseline} | 95% CI | ΔBWT | 95% CI | Δ first-task final {first} "
        "| lr | pairs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (model, key, method), pairs in sorted(members.items()):
        d: dict[str, list[float | None]] = defaultdict(list)
        for base, run in pairs:
            a, b = summary_of(run, score), summary_of(base, score)
            d["aa"].append(_minus(a["aa"], b["aa"]))
            d["bwt"].append(_minus(a["bwt"], b["bwt"]))
            d["first"].append(_minus(a["final_accuracy"][0], b["final_accuracy"][0]))
        lines.append(f"| {model} | {_protocol(key)} | {method} | {pm(d['aa'])} | {_ci(pairs, d['aa'])[0]} | "
                     f"{pm(d['bwt'])} | {_ci(pairs, d['bwt'])[0]} | {pm(d['first'])} | {key[1]} | "
                     f"{_count(pairs)} |")  # fmt: skip
    if unpaired:
        lines.append(f"\nWithout a {baseline} run in the same setting (or with several that --by does not tell "
                     "apart): " + ", ".join(f"{k} ({v})" for k, v in sorted(unpaired.items())))  # fmt: skip
    return "\n".join(lines) + "\n" + _shared_note([p for ps in members.values() for p in ps])


def effect_table(runs: list[dict[str, Any]], component: str, by: tuple[str, ...] = (), score: str = ACCURACY) -> str:
    """Every run whose method includes ``component`` next to the run of the same model, tasks,
    seed and setting without it (``pairing.partners``): AA and BWT of both, their paired
    differences (mean ± std over the pairs, and a t-based 95% interval over the independent units:
    pairs that share their first tasks count once), and the paired difference of learning accuracy
    (ΔLA: each task right after its own training), per order and, where a pair ran several, over
    all its orders ("all N orders"). A row holds one protocol and one pair of rates ("without /
    with" where they differ), so that a pair at two rates is never pooled with one at one rate.
    Runs without a partner (or with several that ``by`` cannot tell apart) are counted under the table."""
    pairs: dict[tuple[str, tuple[str, str], str, str], dict[str, list[Pair]]] = defaultdict(lambda: defaultdict(list))
    unpaired: dict[str, int] = defaultdict(int)
    for run, base in partners(runs, lambda method: without(method, component), by):
        if base is None:
            unpaired[label_of(run, by)] += 1
        else:
            key = (run["model"], row_key((base, run)), label_of(base, by), label_of(run, by))
            pairs[key][order_of(run)].append((base, run))
    if not pairs and not unpaired:
        return ""
    lines = [f"| model | protocol | order | without {component} | with | AA | AA with | ΔAA | 95% CI | BWT | BWT with "
             "| ΔBWT | 95% CI | ΔLA | lr | pairs |", "|---" * 16 + "|"]  # fmt: skip
    for (model, setting, base_label, label), by_order in sorted(pairs.items()):
        rows = sorted(by_order.items())
        if len(rows) > 1:
            rows.append((f"all {len(rows)} orders", [p for _, members in rows for p in members]))
        for order, members in rows:
            b = [summary_of(x, score) for x, _ in members]
            w = [summary_of(y, score) for _, y in members]
            d = {k: [_minus(y[k], x[k]) for x, y in zip(b, w, strict=True)] for k in ("aa", "bwt", "learning_accuracy")}
            cells = [
                pm([x["aa"] for x in b]),
                pm([y["aa"] for y in w]),
                pm(d["aa"]),
                _ci(members, d["aa"])[0],
                pm([x["bwt"] for x in b]),
                pm([y["bwt"] for y in w]),
                pm(d["bwt"]),
                _ci(members, d["bwt"])[0],
                pm(d["learning_accuracy"]),
                setting[1],
                _count(members),
            ]
            head = f"| {model} | {_protocol(setting)} | {order} | {base_label} | {label} | "
            lines.append(head + " | ".join(cells) + " |")
    if unpaired:
        lines.append("\nWithout a partner run (none in the same setting, or several that --by does not tell apart): "
                     + ", ".join(f"{k} ({v})" for k, v in sorted(unpaired.items())))  # fmt: skip
    every = [p for by_order in pairs.values() for ps in by_order.values() for p in ps]
    return "\n".join(lines) + "\n" + _shared_note(every)


def timing_table(runs: list[dict[str, Any]], by: tuple[str, ...] = ()) -> str:
    """One row per run: training seconds of the first task (unmasked by MIGU's default) and of the
    later tasks, the median seconds per optimizer step over the later tasks, evaluation seconds
    (epoch-end evaluations and checkpoints included), minutes in all; and, recorded since
    2026-12-01, the process's CPU minutes in training and the machine's mean load at the tasks'
    ends (wall times grow with what else runs; CPU time much less), and the CPU of each of the
    run's segments (a resumed run may have changed machines; "–" for a segment that recorded none,
    as in older files)."""
    lines = ["| model | order | method | seed | train s, first task | train s, later tasks "
             "| median step s, later tasks | eval s | minutes | train CPU min | load | CPU |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for run in sorted(runs, key=lambda r: (r["model"], order_of(r), label_of(r, by), r["seed"])):
        trained = [t for t in run.get("timings", []) if t.get("task") is not None]
        if not trained:
            continue
        later = trained[1:]
        steps = [t["median_step_seconds"] for t in later if "median_step_seconds" in t]
        step = f"{statistics.median(steps):.2f}" if steps else "-"
        evals = sum(_eval_seconds(t) for t in run["timings"])
        total = sum(t.get("seconds", 0) for t in trained) + evals
        cpu = [t.get("cpu_seconds") for t in trained]
        loads = [t["load_average"] for t in trained if t.get("load_average") is not None]
        lines.append(
            f"| {run['model']} | {order_of(run)} | {label_of(run, by)} | {run['seed']} | {trained[0]['seconds']:.1f} | "
            f"{sum(t['seconds'] for t in later):.1f} | {step} | {evals:.1f} | {total / 60:.1f} | "
            f"{_num(None if None in cpu else sum(cpu) / 60, '.1f')} | "
            f"{_num(statistics.mean(loads) if loads else None, '.1f')} | {_cpus(run)} |"
        )
    return "\n".join(lines) + "\n"


def _cpus(run: dict[str, Any]) -> str:
    """The CPU a run trained on; where a resumed run changed machines, each CPU with the task it
    took over at; "–" when no segment recorded one (files before 2026-12-01)."""
    changes: list[tuple[int, str]] = []
    for segment in run.get("code", []):
        cpu = segment.get("cpu") or "–"  # (a segment from before CPUs were recorded)
        if not changes or changes[-1][1] != cpu:
            changes.append((segment["from_task"], cpu))
    if len(changes) <= 1:
        return changes[0][1] if changes else "–"
    return "; ".join(f"{cpu} from task {task}" for task, cpu in changes)


def _sequence_tables(runs: list[dict[str, Any]], baseline: str | None, by: tuple[str, ...],
                     effect_of: tuple[str, ...], score: str, lacking: list[dict[str, Any]]) -> list[str]:  # fmt: skip
    """The summary, paired differences against ``baseline`` and with/without each ``effect_of``."""
    if score == ACCURACY:
        parts = [
            "## Summary (mean ± std over seeds; over seeds and orders in the 'all N orders' rows)\n",
            summary_table(runs, by),
        ]
    else:
        direction = "higher" if score_matrices(runs[0])[score].get("higher_is_better", True) else "lower"
        parts = [
            f"## Summary of {score} ({direction} is better; mean ± std over seeds, and orders in 'all' rows)\n",
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
    mean_of: dict[str, tuple[str, ...]] | None = None,
) -> str:
    """Summary table, paired differences against ``baseline`` and, optionally, every matrix.

    ``by``: dotted config keys (``train.lr``, ``methods.migu.threshold``) whose values split a
    method into variants, for sweeps and ablations. Labels show only the keys that vary over
    ``runs``, and only where a run sets them. ``score``: the score matrix the tables are of
    (``choose_score``: accuracy by default); runs without it are counted under the summary.
    ``mean_of``: the ``--mean-of`` columns (name -> columns) that per-item differences combine too."""
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
    from .item_pairs import item_pair_sections

    parts += item_pair_sections(runs, by, effect_of, mean_of or {})
    if timings:
        parts += ["\n## Wall time per run\n", timing_table(runs, by)]
    if matrices:
        title = "Accuracy" if score == ACCURACY else score
        parts.append(f"\n## {title} matrices (rows: after training on; columns: task)\n")
        for run in sorted(runs, key=lambda r: (r["model"], order_of(r), label_of(r, by), r["seed"])):
            parts.append(f"\n### {run['model']} / {order_of(run)} / {label_of(run, by)} / seed {run['seed']}\n\n")
            parts.append(format_matrix(run, score))
    return "".join(parts)
