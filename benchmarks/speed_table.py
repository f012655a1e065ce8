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
            f"{f['task']}, {f['fisher_batch_size']} per backward): {_span(f, 'fisher_s', '{:.1f}')} s = "
            f"{_span(f, 'plain_steps_per_estimate', '{:.1f}')} plain steps of {f['plain_batch']} examples "
            f"({f['plain_step_s']:.3f} s) = {_span(f, 'task_share', '{:.1%}')} of the plain time of a task's "
            f"{f['task_steps']} steps ({f.get('config', '?')}); {f.get('rounds', 1)} round(s)",
        ]
    loads = [r["load_average"] for r in [*rows.values(), *([fisher] if fisher else [])] if "load_average" in r]
    if loads:
        ones = [x[0] for pair in loads for x in pair]
        lines += ["", f"Load average (1 min) before and after the rows: {min(ones):.2f}-{max(ones):.2f}"
                  + f" on {meta.get('machine', '?')}"]  # fmt: skip
    return "\n".join(lines)


def _span(row: dict, key: str, form: str) -> str:
    """A median over rounds with its [min-max] where there were several rounds."""
    text = form.format(row[key])
    if row.get("rounds", 1) > 1 and f"{key}_min" in row:
        text += f" [{form.format(row[f'{key}_min'])}-{form.format(row[f'{key}_max'])}]"
    return text
