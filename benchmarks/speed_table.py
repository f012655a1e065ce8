"""The markdown tables of ``benchmarks/speed.py``'s results (``speed.py --table FILE.json``)."""

from __future__ import annotations

import json

from speed_cases import SCORE_VARIANTS, SEQ, TARGETS


def _cell(row: dict, key: str, target: float | None) -> str:
    value = row.get(key)
    if value is None:
        return ""
    text = f"{value:.3f}"
    if f"{key}_min" in row:
        text += f" [{row[f'{key}_min']:.3f}-{row[f'{key}_max']:.3f}]"
    return text + ("" if target is None else (" ✓" if value <= target else " ✗"))


def _optimizers(row: dict) -> str:
    """The optimizer of the timings and, if another, of the memory rows (``--no-time`` keeps the
    timings of an earlier run); rows written before ``train.optim`` used torch's loop."""
    timed = row.get("optim", "adamw_torch")
    memory = row.get("memory_optim", timed)
    return timed if memory == timed else f"time: {timed}, memory: {memory}"


def _name(name: str, row: dict) -> str:
    return f"`{name}`" + ("" if row.get("seq", SEQ) == SEQ else f" (seq {row['seq']})")


def table(path: str) -> str:
    """The markdown tables of a results file, with the issues' targets: medians over rounds with
    their [min-max], the FLOP limit of the fast path; the row scores' step times and the Fisher
    estimate per task where measured."""
    with open(path) as f:
        results = json.load(f)
    meta = results.get("_meta", {})
    lines = [
        f"{meta.get('cpu', meta.get('machine', '?'))}, {meta.get('date', '?')}, torch {meta.get('torch', '?')}",
        "",
        "| case | plain step (s) | MIGU / plain time [min-max] | target | FLOP limit | dense MIGU / plain [min-max] "
        "| target | MIGU / plain peak memory | dense / plain peak memory | rounds | optimizer |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = {name: r for name, r in results.items() if not name.startswith("_")}
    for name, r in rows.items():
        fast_target, dense_target = TARGETS.get(name, (None, None))
        limit = r.get("flop_limit")
        lines.append(
            f"| {_name(name, r)} | {r['plain_step_s']:.3f} | {_cell(r, 'time_ratio', fast_target)} | "
            f"{fast_target or ''} | {'' if limit is None else f'{limit:.3f}'} | "
            f"{_cell(r, 'dense_time_ratio', dense_target)} | {dense_target or ''} | {_cell(r, 'memory_ratio', 1.02)} | "
            f"{_cell(r, 'dense_memory_ratio', 1.02)} | {r.get('rounds', 1)} | {_optimizers(r)} |"
        )
    scored = {name: r for name, r in rows.items() if any(f"{v}_time_ratio" in r for v in SCORE_VARIANTS)}
    if scored:
        lines += [
            "",
            "Row scores: step time / plain step time [min-max] (only magnitude has the fast path; the others "
            "run the reference path: dense weight gradients, then masking)",
            "",
            "| case | plain step (s) | magnitude, fast path | magnitude, reference path | random | gradient "
            "| Fisher (given scores) | rounds |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, r in scored.items():
            cells = [_cell(r, key, None) for key in ("time_ratio", "dense_time_ratio", "random_time_ratio",
                                                       "gradient_time_ratio", "given_time_ratio")]  # fmt: skip
            lines.append(f"| {_name(name, r)} | {r['plain_step_s']:.3f} | {' | '.join(cells)} | {r.get('rounds', 1)} |")
    fisher = results.get("_fisher")
    if fisher:
        f = fisher
        lines += [
            "",
            f"Fisher estimate per task (`empirical_fisher` of the masked weights on {f['examples']} examples of "
            f"{f['task']}, {f['fisher_batch_size']} per backward): {_cell(f, 'fisher_s', None)} s = "
            f"{_cell(f, 'plain_steps_per_estimate', None)} plain steps of {f['plain_batch']} examples "
            f"({f['plain_step_s']:.3f} s) = {_cell(f, 'task_share', None)} of a task's {f['task_steps']} steps "
            f"({f.get('config', '?')}); {f.get('rounds', 1)} round(s)",
        ]
    return "\n".join(lines)
