"""Markdown tables from results files: matrices, AA/BWT per method (mean and std over seeds),
paired differences against a baseline method, the effect of adding one method to every other
(Table 2 of the paper: each CL method with and without MIGU), per-task forgetting."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .. import metrics

REQUIRED = ("model", "method", "seed", "sequence", "accuracy_matrix")


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
    runs = []
    for path in find_results(paths):
        try:
            run = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from err
        missing = [k for k in REQUIRED if k not in run]
        if missing:
            raise ValueError(f"{path} is not a migu results file: missing {missing}")
        run["_path"] = str(path)
        runs.append(run)
    return runs


def order_of(run: dict[str, Any]) -> str:
    order = run.get("config", {}).get("data", {}).get("order")
    return order if isinstance(order, str) else " > ".join(run["sequence"])


def config_value(run: dict[str, Any], key: str) -> str:
    """A dotted config key of a run (``train.lr``, ``methods.migu.threshold``), as text; "-" if unset."""
    value: Any = run.get("config", {})
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return "-"
        value = value[part]
    return str(value)


def label_of(run: dict[str, Any], by: tuple[str, ...] = ()) -> str:
    """The method, followed by the values of the ``by`` config keys that tell variants apart."""
    values = [f"{k}={v}" for k in by if (v := config_value(run, k)) != "-"]
    return run["method"] + (" [" + ", ".join(values) + "]" if values else "")


def varying_keys(runs: list[dict[str, Any]], by: tuple[str, ...]) -> tuple[str, ...]:
    """The ``by`` keys that take more than one value over ``runs`` (unset counts as a value, so
    that a run setting a key is never merged with one leaving it at its default)."""
    return tuple(k for k in by if len({config_value(r, k) for r in runs}) > 1)


def format_matrix(run: dict[str, Any]) -> str:
    names = run["sequence"]
    head = "| after | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
    rows = []
    for i, row in enumerate(run["accuracy_matrix"]):
        label = "(start)" if i == 0 else names[i - 1]
        rows.append(f"| {label} | " + " | ".join("–" if v is None else f"{v:.1f}" for v in row) + " |")
    m = metrics.summary(run["accuracy_matrix"])
    return head + "\n".join(rows) + f"\n\nAA {m['aa']:.2f}, BWT {m['bwt']:.2f}, forgetting {m['forgetting']:.2f}\n"


def _pm(values: list[float]) -> str:
    mean, std = metrics.mean_std(values)
    return f"{mean:.2f} ± {std:.2f}" if len(values) > 1 else f"{mean:.2f}"


def summary_table(runs: list[dict[str, Any]], by: tuple[str, ...] = ()) -> str:
    """One row per (model, order, method variant): AA, BWT, forgetting, learning accuracy, seeds, minutes."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[(run["model"], order_of(run), label_of(run, by))].append(run)
    for run in runs:
        groups[(run["model"], "all orders", label_of(run, by))].append(run)
    lines = ["| model | order | method | AA | BWT | forgetting | new-task acc. | seeds | minutes/run |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    orders = {order_of(r) for r in runs}
    for (model, order, method), members in sorted(groups.items()):
        if order == "all orders" and len(orders) < 2:
            continue
        ms = [metrics.summary(r["accuracy_matrix"]) for r in members]
        minutes = [sum(t.get("seconds", 0) + t.get("eval_seconds", 0) for t in r.get("timings", [])) / 60
                   for r in members]  # fmt: skip
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


def paired_table(runs: list[dict[str, Any]], baseline: str, by: tuple[str, ...] = ()) -> str:
    """Per method variant: AA and BWT minus the baseline's on the same (model, order, seed)."""
    diffs: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run, base in _partners(runs, lambda method: None if method == baseline else baseline, by):
        if base is None:
            continue
        a, b = metrics.summary(run["accuracy_matrix"]), metrics.summary(base["accuracy_matrix"])
        d = diffs[(run["model"], label_of(run, by))]
        d["aa"].append(a["aa"] - b["aa"])
        d["bwt"].append(a["bwt"] - b["bwt"])
        d["first"].append(a["final_accuracy"][0] - b["final_accuracy"][0])
    if not diffs:
        return ""
    lines = [
        f"| model | method | ΔAA vs {baseline} | ΔBWT | Δ first-task final acc. | pairs |",
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


def effect_table(runs: list[dict[str, Any]], component: str, by: tuple[str, ...] = ()) -> str:
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
        b = [metrics.summary(x["accuracy_matrix"]) for x, _ in members]
        w = [metrics.summary(y["accuracy_matrix"]) for _, y in members]
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
    later tasks, the median seconds per optimizer step over the later tasks, evaluation seconds."""
    lines = ["| model | order | method | seed | train s, first task | train s, later tasks "
             "| median step s, later tasks | eval s | minutes |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for run in sorted(runs, key=lambda r: (r["model"], order_of(r), label_of(r, by), r["seed"])):
        trained = [t for t in run.get("timings", []) if t.get("task") is not None]
        if not trained:
            continue
        later = trained[1:]
        steps = [t["median_step_seconds"] for t in later if "median_step_seconds" in t]
        step = f"{statistics.median(steps):.2f}" if steps else "-"
        evals = sum(t.get("eval_seconds", 0) for t in run["timings"])
        total = sum(t.get("seconds", 0) for t in trained) + evals
        lines.append(
            f"| {run['model']} | {order_of(run)} | {label_of(run, by)} | {run['seed']} | {trained[0]['seconds']:.1f} | "
            f"{sum(t['seconds'] for t in later):.1f} | {step} | {evals:.1f} | {total / 60:.1f} |"
        )
    return "\n".join(lines) + "\n"


def report_markdown(
    runs: list[dict[str, Any]],
    baseline: str | None = "finetune",
    matrices: bool = False,
    by: tuple[str, ...] = (),
    timings: bool = False,
    effect_of: tuple[str, ...] = (),
) -> str:
    """Summary table, paired differences against ``baseline`` and, optionally, every matrix.

    ``by``: dotted config keys (``train.lr``, ``methods.migu.threshold``) whose values split a
    method into variants, for sweeps and ablations. Labels show only the keys that vary over
    ``runs``, and only where a run sets them."""
    by = varying_keys(runs, by)
    parts = ["## Summary (mean ± std over seeds)\n", summary_table(runs, by)]
    if baseline:
        paired = paired_table(runs, baseline, by)
        if paired:
            parts += [f"\n## Paired differences against {baseline} (same order and seed; mean ± std)\n", paired]
    for component in effect_of:
        effect = effect_table(runs, component, by)
        if effect:
            parts += [f"\n## With and without {component} (paired: same order and seed; mean ± std)\n", effect]
    if timings:
        parts += ["\n## Wall time per run\n", timing_table(runs, by)]
    if matrices:
        parts.append("\n## Accuracy matrices (rows: after training on; columns: task)\n")
        for run in sorted(runs, key=lambda r: (r["model"], order_of(r), label_of(r, by), r["seed"])):
            parts.append(f"\n### {run['model']} / {order_of(run)} / {label_of(run, by)} / seed {run['seed']}\n\n")
            parts.append(format_matrix(run))
    return "".join(parts)
