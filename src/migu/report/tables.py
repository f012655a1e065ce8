"""Markdown tables from results files: matrices, AA/BWT per method (mean and std over seeds),
paired differences against a baseline method, per-task forgetting."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
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


def format_matrix(run: dict[str, Any]) -> str:
    names = run["sequence"]
    head = "| after | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
    rows = []
    for i, row in enumerate(run["accuracy_matrix"]):
        label = "(start)" if i == 0 else names[i - 1]
        rows.append(f"| {label} | " + " | ".join(f"{v:.1f}" for v in row) + " |")
    m = metrics.summary(run["accuracy_matrix"])
    return head + "\n".join(rows) + f"\n\nAA {m['aa']:.2f}, BWT {m['bwt']:.2f}, forgetting {m['forgetting']:.2f}\n"


def _pm(values: list[float]) -> str:
    mean, std = metrics.mean_std(values)
    return f"{mean:.2f} ± {std:.2f}" if len(values) > 1 else f"{mean:.2f}"


def summary_table(runs: list[dict[str, Any]]) -> str:
    """One row per (model, order, method): AA, BWT, forgetting, learning accuracy, seeds, minutes."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[(run["model"], order_of(run), run["method"])].append(run)
    for run in runs:
        groups[(run["model"], "all orders", run["method"])].append(run)
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


def paired_table(runs: list[dict[str, Any]], baseline: str) -> str:
    """Per method: AA and BWT minus the baseline's on the same (model, order, seed)."""
    index = {(r["model"], order_of(r), r["seed"], r["method"]): r for r in runs}
    diffs: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (model, order, seed, method), run in index.items():
        base = index.get((model, order, seed, baseline))
        if base is None or method == baseline:
            continue
        a, b = metrics.summary(run["accuracy_matrix"]), metrics.summary(base["accuracy_matrix"])
        d = diffs[(model, method)]
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


def report_markdown(runs: list[dict[str, Any]], baseline: str | None = "finetune", matrices: bool = False) -> str:
    parts = ["## Summary (mean ± std over seeds)\n", summary_table(runs)]
    if baseline:
        paired = paired_table(runs, baseline)
        if paired:
            parts += [f"\n## Paired differences against {baseline} (same order and seed; mean ± std)\n", paired]
    if matrices:
        parts.append("\n## Accuracy matrices (rows: after training on; columns: task)\n")
        for run in sorted(runs, key=lambda r: (r["model"], order_of(r), r["method"], r["seed"])):
            parts.append(f"\n### {run['model']} / {order_of(run)} / {run['method']} / seed {run['seed']}\n\n")
            parts.append(format_matrix(run))
    return "".join(parts)
