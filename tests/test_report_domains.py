"""Continual pre-training tables from hand-made results: end tasks per domain with their
first-two / last-two averages, training time per domain with the X+migu / X ratio."""

import json

import pytest

from migu.cli import main
from migu.report.domains import domain_time_table, end_task_table

DOMAINS = ["d1", "d2", "d3", "d4"]


def _run(method: str, seed: int, mf1: list[float], acc: list[float], seconds: list[float]) -> dict:
    blank = [None] * len(DOMAINS)
    ppl = [[100.0 - 10 * i - j for j in range(len(DOMAINS))] for i in range(len(DOMAINS) + 1)]
    return {
        "model": "m",
        "method": method,
        "seed": seed,
        "kind": "corpus",
        "sequence": DOMAINS,
        "score_matrices": {
            "perplexity": {"higher_is_better": False, "matrix": ppl},
            "end_accuracy": {"higher_is_better": True, "matrix": [blank] * len(DOMAINS) + [acc]},
            "end_macro_f1": {"higher_is_better": True, "matrix": [blank] * len(DOMAINS) + [mf1]},
        },
        "timings": [{"task": None, "eval_seconds": 1.0}]
        + [{"task": d, "seconds": s, "eval_seconds": 2.0} for d, s in zip(DOMAINS, seconds, strict=True)],
        "config": {"data": {"order": DOMAINS}},
    }


RUNS = [
    _run("finetune", 0, [60, 70, 80, 90], [62, 72, 82, 92], [10, 20, 20, 20]),
    _run("finetune", 1, [64, 70, 80, 94], [66, 72, 82, 96], [10, 20, 20, 20]),
    _run("finetune+migu", 0, [62, 72, 78, 88], [64, 74, 80, 90], [10, 18, 18, 18]),
    _run("finetune+migu", 1, [62, 72, 78, 88], [64, 74, 80, 90], [10, 19, 19, 19]),
]


def _row(table: str, method: str) -> list[str]:
    line = next(x for x in table.splitlines() if x.startswith(f"| m | {method} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_end_task_table_averages():
    table = end_task_table(RUNS)
    ft = _row(table, "finetune")
    assert ft[2] == "62.00 ± 2.83 (64.00 ± 2.83)"  # d1 MF1 (ACC) over seeds 60, 64 (62, 66)
    # mean ACC, mean MF1, first two MF1, last two MF1, seeds
    assert ft[6:] == ["78.00 ± 1.41", "76.00 ± 1.41", "66.00 ± 1.41", "86.00 ± 1.41", "2"]
    migu = _row(table, "finetune+migu")
    assert migu[6:] == ["77.00 ± 0.00", "75.00 ± 0.00", "67.00 ± 0.00", "83.00 ± 0.00", "2"]


def test_domain_time_ratio_pairs_by_seed():
    table = domain_time_table(RUNS)
    migu = _row(table, "finetune+migu")
    # later domains: 54/60 = 0.9 (seed 0) and 57/60 = 0.95 (seed 1)
    assert migu[2] == "10.00 ± 0.00" and migu[3] == "18.50 ± 0.71"
    assert migu[4] == f"{0.925:.3f} ± {0.0353553:.3f}"
    assert _row(table, "finetune")[4] == "–"


def test_report_prints_end_tasks_and_perplexity(tmp_path, capsys):
    for i, run in enumerate(RUNS):
        folder = tmp_path / f"run{i}"
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps(run))
    assert main(["report", str(tmp_path), "--score", "perplexity", "--timings"]) == 0
    out = capsys.readouterr().out
    assert "End tasks after the last domain" in out and "Training time per domain" in out
    assert "Summary of perplexity (lower is better" in out


def test_no_end_task_runs_give_no_table():
    bare = {**RUNS[0], "score_matrices": {"perplexity": RUNS[0]["score_matrices"]["perplexity"]}}
    assert end_task_table([bare]) == ""
    with pytest.raises(StopIteration):
        _row(domain_time_table([bare]), "finetune+migu")
