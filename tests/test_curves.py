"""The two-panel learning/forgetting figure from fixture results files."""

import csv
import json

import pytest

from migu.cli import main
from migu.report.curves import collect, curves_figure


def write_run(folder, method, seed, learning, general, task="code_mbpp"):
    """A results.json with per-epoch curves for one task of len(learning) - 1 epochs (point 0: before)."""
    points = [{"task_index": 0, "epoch": e} for e in range(len(learning))]
    results = {
        "model": "tiny", "method": method, "seed": seed, "sequence": [task], "score_matrices": {},
        "curves": {"points": points, "scores": {
            "pass@1": {"higher_is_better": True, "columns": ["code_mbpp"], "values": [[v] for v in learning]},
            "lm_eval/acc": {"higher_is_better": True, "columns": ["hellaswag", "mean"],
                            "values": [[g + 1, g] for g in general]},
            "loss": {"higher_is_better": False, "columns": ["code_mbpp"], "values": [[1.0]] * len(learning)},
        }},
    }  # fmt: skip
    run = folder / f"{method}_{task}_seed{seed}"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(results))


def test_figure_and_csv_from_results(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "lora", 0, [0, 10, 20, 30], [40, 38, 36, 35])
    write_run(runs, "lora", 1, [0, 12, 22, 28], [40, 39, 35, 33])
    write_run(runs, "lora+migu", 0, [0, 9, 21, 29], [40, 40, 39, 38])
    (runs / "no_curves").mkdir()
    (runs / "no_curves" / "results.json").write_text(json.dumps({"method": "finetune", "seed": 0}))
    png, table = curves_figure([runs], tmp_path / "fig" / "curves.png", title="fixture")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 2 * 3 * 4  # two panels, three runs with curves, four points each
    general = [r for r in rows if r["score"] == "lm_eval/acc:mean" and r["method"] == "lora+migu"]
    assert [float(r["value"]) for r in general] == [40, 40, 39, 38]  # the mean column, not hellaswag's
    learning = collect([runs], "pass@1", None)
    assert sorted((s.method, s.seed) for s in learning) == [("lora", 0), ("lora", 1), ("lora+migu", 0)]
    assert learning[0].epochs == (0.0, 1.0, 2.0, 3.0)


def test_cli_and_errors(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_run(runs, "finetune", 0, [0, 5], [30, 25])
    out = tmp_path / "c.png"
    assert (
        main(["curves", str(runs), "--out", str(out), "--learning", "loss", "--general", "lm_eval/acc:hellaswag"]) == 0
    )
    assert out.is_file() and out.with_suffix(".csv").is_file()
    assert main(["curves", str(runs), "--out", str(tmp_path / "x.png"), "--learning", "pass@5"]) == 2
    assert "pass@5" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no column"):
        curves_figure([runs], tmp_path / "y.png", general="lm_eval/acc:piqa")
    with pytest.raises(ValueError, match="PNG"):
        curves_figure([runs], tmp_path / "y.pdf")


def test_report_tables_of_the_curves(tmp_path):
    """Per score column and epoch: mean ± std over seeds, and with minus without MIGU on the
    same seed; an unfinished run's missing epochs are a dash, not a mean of fewer seeds."""
    from migu.report.curve_tables import curve_effect_table, curve_table
    from migu.report.runs import load_results

    runs = tmp_path / "runs"
    write_run(runs, "lora", 0, [0, 10, 20], [40, 38, 36])
    write_run(runs, "lora", 1, [0, 12, 22], [40, 39, 35])
    write_run(runs, "lora+migu", 0, [0, 9, 24], [40, 40, 39])
    write_run(runs, "lora+migu", 1, [0, 11], [40, 41])  # stopped after its first epoch
    write_run(runs, "lora", 0, [0, 50, 60], [40, 40, 40], task="gsm8k")  # another task: paired apart
    write_run(runs, "lora+migu", 0, [0, 40, 70], [40, 40, 40], task="gsm8k")
    loaded = load_results([runs])
    table = curve_table(loaded).splitlines()
    assert table[0] == "| score | column | model | order | method | runs | epoch 0 | epoch 1 | epoch 2 |"
    assert "| pass@1 | code_mbpp | tiny | code_mbpp | lora | 2 | 0.00 ± 0.00 | 11.00 ± 1.41 | 21.00 ± 1.41 |" in table
    assert "| pass@1 | code_mbpp | tiny | code_mbpp | lora+migu | 2 | 0.00 ± 0.00 | 10.00 ± 1.41 | – |" in table
    assert "| lm_eval/acc | mean | tiny | code_mbpp | lora+migu | 2 | 40.00 ± 0.00 | 40.50 ± 0.71 | – |" in table
    effect = curve_effect_table(loaded, "migu").splitlines()
    assert effect[0] == "| score | column | model | order | without | with | pairs | epoch 0 | epoch 1 | epoch 2 |"
    assert "| pass@1 | code_mbpp | tiny | code_mbpp | lora | lora+migu | 2 | 0.00 ± 0.00 | -1.00 ± 0.00 | – |" in effect
    assert "| lm_eval/acc | mean | tiny | code_mbpp | lora | lora+migu | 2 | 0.00 ± 0.00 | 2.00 ± 0.00 | – |" in effect
    assert "| pass@1 | code_mbpp | tiny | gsm8k | lora | lora+migu | 1 | 0.00 | -10.00 | 10.00 |" in effect
    assert curve_effect_table(loaded, "replay") == ""


def test_report_of_one_task_runs_shows_curves_not_cl_metrics(tmp_path, capsys):
    """AA, BWT and forgetting are undefined for one task: a forgetting of 0.00 would read as
    "nothing forgotten" of an instruction-tuning run, whose general abilities may have moved."""
    from migu.cli import main

    runs = tmp_path / "runs"
    write_run(runs, "lora", 0, [0, 10], [40, 30])
    write_run(runs, "lora+migu", 0, [0, 8], [40, 38])
    for path in runs.rglob("results.json"):
        results = json.loads(path.read_text())
        learned = results["curves"]["scores"]["pass@1"]["values"]
        matrix = {"higher_is_better": True, "columns": ["code_mbpp"], "matrix": [learned[0], learned[-1]]}
        results["score_matrices"] = {"pass@1": matrix}
        path.write_text(json.dumps(results))
    assert main(["report", str(runs), "--effect-of", "migu", "--baseline", ""]) == 0
    out = capsys.readouterr().out
    assert "## One-task runs" in out and "| forgetting |" not in out and "| AA |" not in out
    assert "| lm_eval/acc | mean | tiny | code_mbpp | lora | lora+migu | 1 | 0.00 | 8.00 |" in out


def test_one_task_runs_evaluated_at_both_ends_are_tabled_and_drawn_as_curves(tmp_path, capsys):
    """``data.evaluate_every: task`` on one task (the fair queue's instruction pairs at 500
    documents): the evaluations before and after training are the run's curve (epochs 0 and E)."""
    from migu.report.runs import with_end_points_as_curves

    runs = tmp_path / "runs"
    for method, after in (("lora", [36.0, 60.0]), ("lora+migu", [38.0, 61.0])):
        folder = runs / f"{method}_code_mbpp_seed1"
        folder.mkdir(parents=True)
        general = {"higher_is_better": True, "columns": ["hellaswag", "winogrande", "arc_challenge", "mean"],
                   "matrix": [[40.0, 50.0, 30.0, 40.0], [*after[:1], 52.0, 30.0, (after[0] + 82.0) / 3]]}  # fmt: skip
        loss = {"higher_is_better": False, "columns": ["code_mbpp"], "matrix": [[1.2], [0.9]]}
        results = {"model": "tiny", "method": method, "seed": 1, "sequence": ["code_mbpp"],
                   "config": {"train": {"epochs": 4}},
                   "score_matrices": {"lm_eval/acc": general, "loss": loss}}  # fmt: skip
        (folder / "results.json").write_text(json.dumps(results))
    assert main(["report", str(runs), "--effect-of", "migu", "--baseline", "",
                 "--mean-of", "paper3=hellaswag,winogrande,arc_challenge"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "## One-task runs" in out and "| AA |" not in out and "| epoch 0 | epoch 4 |" in out
    assert "| lm_eval/acc | hellaswag | tiny | code_mbpp | lora | lora+migu | 1 | 0.00 | 2.00 |" in out
    assert "| lm_eval/acc | paper3 | tiny | code_mbpp | lora | lora+migu | 1 | 0.00 | 0.67 |" in out
    assert "| loss | code_mbpp | tiny | code_mbpp | lora | 1 | 1.20 | 0.90 |" in out
    assert len(collect([runs], "lm_eval/acc", "mean")[0].epochs) == 2  # (the figure reads them too)
    # a run of several tasks, or one with curves of its own, is left as it is
    several = {"sequence": ["a", "b"], "score_matrices": {"accuracy": {"matrix": [[None, None], [1, None]]}}}
    assert "curves" not in with_end_points_as_curves(several)
    own = {"sequence": ["a"], "curves": {"points": []}, "score_matrices": {"loss": {"matrix": [[1], [2]]}}}
    assert with_end_points_as_curves(dict(own))["curves"] == {"points": []}
