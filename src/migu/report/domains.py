"""Tables of continual pre-training runs (corpus tasks): the end tasks after the last domain
(the DAS protocol: accuracy and macro-F1 per domain, their mean, and the mean over the first two
and the last two domains, as the paper's Table 4) and the training time per domain, with each
``X+migu`` against its ``X`` on the same model, order and seed (the paper's Table 9 ratio)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from .pairing import partners, pm, without
from .runs import label_of, order_of, score_matrices

END_SCORES = ("end_accuracy", "end_macro_f1")
END_SUMMARY = ("mean_accuracy", "mean_macro_f1", "first_two_macro_f1", "last_two_macro_f1")


def has_end_tasks(runs: list[dict[str, Any]]) -> bool:
    return any(all(s in score_matrices(r) for s in END_SCORES) for r in runs)


def end_scores(run: dict[str, Any], score: str) -> list[float | None]:
    """The end-task scores after the last domain, per domain (the matrix's last row)."""
    return list(score_matrices(run)[score]["matrix"][-1])


def _mean(values: list[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else statistics.fmean(values)  # type: ignore[arg-type]


def end_summary(accuracy: list[float | None], macro_f1: list[float | None]) -> dict[str, float | None]:
    """The DAS averages of one model's end-task scores per domain (the paper's Table 4): mean
    accuracy and macro-F1, and the macro-F1 means of the first two and the last two domains."""
    return {
        "mean_accuracy": _mean(accuracy),
        "mean_macro_f1": _mean(macro_f1),
        "first_two_macro_f1": _mean(macro_f1[:2]),
        "last_two_macro_f1": _mean(macro_f1[-2:]),
    }


def end_task_table(runs: list[dict[str, Any]], by: tuple[str, ...] = ()) -> str:
    """One row per (model, order, method variant), mean ± std over seeds: macro-F1 (accuracy) per
    domain, and mean, first-two and last-two averages of both."""
    runs = [r for r in runs if all(s in score_matrices(r) for s in END_SCORES)]
    if not runs:
        return ""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[(run["model"], order_of(run), label_of(run, by))].append(run)
    lines = []
    for sequence in sorted({tuple(r["sequence"]) for r in runs}):
        lines += [
            "| model | method | " + " | ".join(f"{d} MF1 (ACC)" for d in sequence)
            + " | mean ACC | mean MF1 | first two MF1 | last two MF1 | runs |",
            "|---|---|" + "---|" * (len(sequence) + 5),
        ]  # fmt: skip
        for (model, _, method), members in sorted(groups.items()):
            if tuple(members[0]["sequence"]) != sequence:
                continue
            acc = [end_scores(r, "end_accuracy") for r in members]
            mf1 = [end_scores(r, "end_macro_f1") for r in members]
            cells = [f"{pm([m[d] for m in mf1])} ({pm([a[d] for a in acc])})" for d in range(len(sequence))]
            summaries = [end_summary(a, m) for a, m in zip(acc, mf1, strict=True)]
            cells += [pm([s[key] for s in summaries]) for key in END_SUMMARY]
            lines.append(f"| {model} | {method} | " + " | ".join(cells) + f" | {len(members)} |")
        lines.append("")
    return "\n".join(lines)


def domain_seconds(run: dict[str, Any]) -> list[float]:
    """Training seconds per domain (task), in order."""
    return [t["seconds"] for t in run.get("timings", []) if t.get("task") is not None and "seconds" in t]


def domain_time_table(runs: list[dict[str, Any]], by: tuple[str, ...] = ()) -> str:
    """Per method variant: mean training seconds per domain (the first domain apart: MIGU leaves
    it unmasked by default) and, for ``X+migu``, the ratio of its later domains' training time to
    ``X``'s on the same model, order and seed (mean ± std over seeds)."""
    rows: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        seconds = domain_seconds(run)
        if len(seconds) < 2:
            continue
        row = rows[(run["model"], label_of(run, by))]
        row["first"].append(seconds[0])
        row["later"].append(statistics.fmean(seconds[1:]))
    for run, base in partners(runs, lambda m: without(m, "migu"), by):
        if base is not None and len(domain_seconds(run)) > 1 and len(domain_seconds(base)) > 1:
            later = sum(domain_seconds(run)[1:]) / sum(domain_seconds(base)[1:])
            rows[(run["model"], label_of(run, by))]["ratio"].append(later)
    if not rows:
        return ""
    lines = ["| model | method | train s, first domain | train s per later domain | later domains: X+migu / X | runs |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for (model, method), row in sorted(rows.items()):
        ratio = row.get("ratio")
        ratio_text = _ratio(ratio) if ratio else "–"
        lines.append(f"| {model} | {method} | {pm(row['first'])} | {pm(row['later'])} | {ratio_text} | "
                     f"{len(row['later'])} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _ratio(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def domain_sections(runs: list[dict[str, Any]], by: tuple[str, ...], timings: bool) -> list[str]:
    """Continual pre-training runs: the end tasks and (with ``timings``) training time per domain."""
    parts = []
    if has_end_tasks(runs):
        parts += ["\n## End tasks after the last domain (macro-F1, accuracy in brackets; mean ± std over seeds)\n\n",
                  end_task_table(runs, by)]  # fmt: skip
    if timings and any(r.get("kind") == "corpus" for r in runs):
        parts += [
            "\n## Training time per domain\n\n",
            domain_time_table([r for r in runs if r.get("kind") == "corpus"], by),
        ]
    return parts
