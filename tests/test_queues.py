"""The fair-comparison and row-score queues (benchmarks/fair.py, benchmarks/scores.py): what they
plan, and that the row-score runs share the fair queue's folder and protocol; nothing trains."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _module(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fair():
    return _module("fair")


@pytest.fixture(scope="module")
def scores():
    return _module("scores")


def test_the_fair_queue_plans_the_issues_runs_at_one_rate(fair, tmp_path):
    runs = fair.configs(tmp_path)
    folders = [Path(c.output_dir).name for c in runs]
    assert folders.count("standard") == 27 + 12 and folders.count("no_names") == 6 + 4
    assert folders.count("rates") == 6 + 1 + 8 + 1 and folders.count("long") == 15
    standard = [c for c in runs if Path(c.output_dir).name == "standard"]
    assert {c.train.lr for c in standard} == {1e-4} and {c.protocol for c in standard} == {"paper"}
    assert all(c.data.names_in_input and c.train.batch_size == 8 for c in standard)
    names = [c for c in runs if Path(c.output_dir).name == "no_names"]
    assert not any(c.data.names_in_input for c in names) and {c.protocol for c in names} == {"paper_without_names"}
    # seed 1 adds orders 1 and 3 (independent of each other), after the issue's own runs
    assert sorted((c.seed, c.data.order) for c in names if c.seed == 1) == [(1, "order1")] * 2 + [(1, "order3")] * 2
    assert folders.index("instruct") < len(folders) - folders[::-1].index("no_names") - 1
    rates = [c for c in runs if Path(c.output_dir).name == "rates"]
    assert {c.train.lr for c in rates} == {1e-5, 3e-5, 3e-4}
    # finetune at 3e-5 on all nine (order, seed) units of the standard FT runs, one run each
    units = sorted((c.data.order, c.seed) for c in rates if c.method == "finetune" and c.train.lr == 3e-5
                   and c.data.order != "order4")  # fmt: skip
    assert units == sorted((o, s) for o in ("order1", "order2", "order3") for s in (0, 1, 2))
    # and on long order 4, straight after its five arms at 1e-4 and before the instruction runs
    long_slow = [i for i, c in enumerate(runs) if c.data.order == "order4" and c.train.lr == 3e-5]
    long_fast = [i for i, c in enumerate(runs) if c.data.order == "order4" and c.train.lr == 1e-4]
    assert len(long_slow) == 1 and long_slow[0] == max(long_fast) + 1 == folders.index("instruct") - 1
    assert runs[long_slow[0]].method == "finetune" and Path(runs[long_slow[0]].output_dir).name == "rates"


def test_the_instruction_pairs_are_scored_at_both_ends_at_500_documents(fair, tmp_path):
    runs = [c for c in fair.configs(tmp_path) if Path(c.output_dir).name == "instruct"]
    # the LoRA seed-1 pair at its rate, the FT pair at its own: one rate within each pair
    assert sorted((c.method, c.seed, c.train.lr) for c in runs) == [
        ("finetune", 0, 2e-5), ("finetune+migu", 0, 2e-5), ("lora", 1, 1e-3), ("lora+migu", 1, 1e-3)]  # fmt: skip
    for c in runs:
        # evaluated before training and after the one task (not every epoch), models kept for migu eval
        assert c.data.evaluate_every == "task" and c.save_model and c.keep_samples
        assert set(c.evaluators) == {"lm_loss", "lm_eval"}
        assert c.evaluators["lm_eval"]["limit"] == 500
        assert c.evaluators["lm_eval"]["tasks"][:3] == ["hellaswag", "winogrande", "arc_challenge"]


def test_row_scores_share_the_fair_folder_and_choose_blocks_on_validation(fair, scores, tmp_path):
    from migu.bench.queue import run_folder

    select = scores.selection(tmp_path)
    assert [c.methods["freeze_bottom"]["blocks"] for c in select] == [1, 2, 3, 4, 5]
    assert all(c.data.evaluate_on == "validation" for c in select)
    assert scores.choose_blocks(tmp_path) is None  # nothing ran yet
    for k, config in enumerate(select, start=1):
        folder = run_folder(config)
        folder.mkdir(parents=True)
        aa = 60.0 + (k == 3)
        (folder / "results.json").write_text(json.dumps({"accuracy_matrix": [[None, None], [aa, None], [aa, aa]]}))
    assert scores.choose_blocks(tmp_path) == 3
    assert json.loads((tmp_path / "freeze_choice.json").read_text())["blocks"] == 3
    tests = scores.tests(tmp_path, 3)
    assert len(tests) == 24 + 4 + 12 and {c.methods["freeze_bottom"]["blocks"] for c in tests} == {3}
    assert [c.seed for c in tests[:24]] == [0] * 12 + [1] * 12 and {c.seed for c in tests[28:]} == {2}  # seed 2 last
    # a fair-queue run and a row-score run of the same setting live side by side: one folder, one protocol
    fair_standard = {run_folder(c).parent for c in fair.configs(tmp_path) if Path(c.output_dir).name == "standard"}
    assert {run_folder(c).parent for c in tests[:24] + tests[28:]} == fair_standard
    assert {c.protocol for c in tests} == {"paper"} and {c.train.lr for c in tests} == {1e-4}


def test_only_narrows_the_row_score_queue_and_a_text_that_matches_nothing_is_an_error(scores, tmp_path, capsys):
    (tmp_path / "freeze_choice.json").write_text(json.dumps({"blocks": 2}))
    with pytest.raises(SystemExit) as stop:
        scores.main(["--out", str(tmp_path), "--list", "--only", "long/"])
    assert stop.value.code == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("== ")]
    assert [line.split()[1] for line in listed] == [
        f"long/minilm_{m}_order4_seed0" for m in ("finetune+fisher", "finetune+gradient", "freeze_bottom", "osf")
    ]
    with pytest.raises(SystemExit) as stop:
        scores.main(["--out", str(tmp_path), "--list", "--only", "no such run"])
    assert stop.value.code == 2 and "--only 'no such run'" in capsys.readouterr().err
