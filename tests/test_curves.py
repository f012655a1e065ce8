"""The two-panel learning/forgetting figure from fixture results files."""

import csv
import json

import pytest

from migu.cli import main
from migu.report.curves import collect, curves_figure


def write_run(folder, method, seed, learning, general):
    """A results.json with per-epoch curves for one task of len(learning) - 1 epochs (point 0: before)."""
    points = [{"task_index": 0, "epoch": e} for e in range(len(learning))]
    results = {
        "model": "tiny", "method": method, "seed": seed, "sequence": ["code_mbpp"],
        "curves": {"points": points, "scores": {
            "pass@1": {"higher_is_better": True, "columns": ["code_mbpp"], "values": [[v] for v in learning]},
            "lm_eval/acc": {"higher_is_better": True, "columns": ["hellaswag", "mean"],
                            "values": [[g + 1, g] for g in general]},
            "loss": {"higher_is_better": False, "columns": ["code_mbpp"], "values": [[1.0]] * len(learning)},
        }},
    }  # fmt: skip
    run = folder / f"{method}_seed{seed}"
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
