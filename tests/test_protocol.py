"""The run store and protocol: score matrices, schedules, artifacts, JSONL sources, exit paths."""

import json

import numpy as np
import pytest

from migu.artifacts import kept_row_masks
from migu.bench import run, run_config
from migu.methods.migu_method import Migu

from test_runner import _config

KINDS = {
    "options": {"text": "a text", "label": "yes"},
    "corpus": {"text": "a paragraph of a domain"},
    "instruction": {"prompt": "add 1 and 2", "response": "3"},
}


def _jsonl_dir(root, kind, rows=None, tasks=("t1", "t2")):
    for task in tasks:
        folder = root / task
        folder.mkdir(parents=True, exist_ok=True)
        for split in ("train", "test"):
            lines = rows if rows is not None else [KINDS[kind] | ({"label": "yes" if i % 2 else "no"} if kind ==
                                                   "options" else {}) for i in range(6)]  # fmt: skip
            (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return root


def _jsonl_config(root, out, kind, model="tiny-bert"):
    return run_config({
        "model": model, "method": "finetune", "output_dir": str(out), "progress": False,
        "data": {"source": "jsonl", "kind": kind, "root": str(root), "order": ["t1", "t2"], "n_train": 4, "n_test": 2},
        "train": {"batch_size": 2, "micro_batch_size": 2, "max_length": 16, "eval_batch_size": 2},
    })  # fmt: skip


@pytest.mark.parametrize("kind", ["options", "corpus", "instruction"])
@pytest.mark.parametrize(
    "rows, message",
    [
        ("missing", "line 1: missing field"),
        ("wrong_type", "line 1: field .* must be a string, got int"),
        ("empty", "holds no .* examples"),
        ("not_json", "line 1: not valid JSON"),
    ],
)
def test_jsonl_bad_input_names_file_and_line_and_leaves_no_run_folder(tmp_path, kind, rows, message):
    good = dict(KINDS[kind])
    key = next(iter(good))
    bad = {"missing": [{k: v for k, v in good.items() if k != key}], "wrong_type": [{**good, key: 3}],
           "empty": [{"text": "   "}] if kind == "corpus" else [], "not_json": None}[rows]  # fmt: skip
    root = _jsonl_dir(tmp_path / "data", kind, bad if bad is not None else [])
    if rows == "not_json":
        (root / "t1" / "train.jsonl").write_text("{nope\n")
    with pytest.raises(ValueError, match=message) as err:
        run(_jsonl_config(root, tmp_path / "out", kind))
    assert "t1" in str(err.value) and "train.jsonl" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_jsonl_missing_task_folder_and_unknown_label(tmp_path):
    root = _jsonl_dir(tmp_path / "data", "options")
    (root / "t1" / "labels.json").write_text(json.dumps(["no", "maybe"]))
    with pytest.raises(ValueError, match=r"t1/train.jsonl line \d+: label 'yes' is not one of"):
        run(_jsonl_config(root, tmp_path / "out", "options"))
    config = run_config({"model": "tiny-bert", "output_dir": str(tmp_path / "out"),
                         "data": {"source": "jsonl", "root": str(root), "order": ["t3"]}})  # fmt: skip
    with pytest.raises(FileNotFoundError, match=r"task folder .*t3 does not exist"):
        run(config)
    assert not (tmp_path / "out").exists()


def test_jsonl_options_run_writes_score_matrices(tmp_path):
    root = _jsonl_dir(tmp_path / "data", "options")
    result = run(_jsonl_config(root, tmp_path / "out", "options"))
    assert set(result["score_matrices"]) == {"accuracy", "macro_f1"}
    acc = result["score_matrices"]["accuracy"]
    assert acc["higher_is_better"] and acc["columns"] == ["t1", "t2"] and acc["matrix"] == result["accuracy_matrix"]
    assert result["kind"] == "options" and result["score_metrics"]["macro_f1"]["aa"] is not None


def test_diagonal_schedule_evaluates_2t_minus_1_times_and_keeps_aa_bwt(bench_dir, tmp_path):
    full = run(_config(bench_dir, tmp_path / "a"))
    diagonal = run(_config(bench_dir, tmp_path / "b", data={**_data(bench_dir), "evaluate_tasks": "diagonal"}))
    matrix = diagonal["accuracy_matrix"]
    assert sum(v is not None for row in matrix for v in row) == 2 * 3 - 1
    assert all(v is None for v in matrix[0])
    for i in (1, 2):
        assert [j for j, v in enumerate(matrix[i]) if v is not None] == [i - 1]
        assert matrix[i][i - 1] == full["accuracy_matrix"][i][i - 1]
    assert matrix[3] == full["accuracy_matrix"][3]
    for key in ("aa", "bwt", "learning_accuracy"):
        assert diagonal["metrics"][key] == pytest.approx(full["metrics"][key])
    assert diagonal["metrics"]["forgetting"] is None
    # the effective settings, defaults included, beside the config as given (which the fingerprint hashes)
    assert diagonal["method_settings"]["migu"]["threshold"] == 0.7
    assert diagonal["method_settings"]["migu"]["skip_first_task"] is True
    assert diagonal["config"]["methods"] == {}


def _data(bench_dir):
    return {"root": str(bench_dir), "order": "tiny", "n_train": 16, "n_test": 8}


def test_artifacts_hold_the_kept_rows_the_handle_reported(bench_dir, tmp_path, monkeypatch):
    reported = {}
    original = Migu.after_task

    def recording(self, model, ctx):
        reported[ctx.task.name] = {n: r.kept_rows for n, r in self.handle.report().items() if r.steps}
        return original(self, model, ctx)

    monkeypatch.setattr(Migu, "after_task", recording)
    result = run(_config(bench_dir, tmp_path))
    run_dir = tmp_path / "tiny-bert_finetune+migu_tiny_seed0"
    masks = kept_row_masks(run_dir)
    assert list(masks) == ["beta", "gamma"]  # the first task is trained unmasked
    assert [(i["task"], i["name"]) for i in result["artifacts"]] == [("beta", "kept_rows"), ("gamma", "kept_rows")]
    for task, layers in masks.items():
        assert set(layers) == set(reported[task])
        for layer, m in layers.items():
            assert np.array_equal(np.flatnonzero(m["last"]), reported[task][layer].numpy())
            assert m["ever"][m["last"]].all() and m["ever"].sum() >= m["last"].sum()
    size = sum(p.stat().st_size for p in (run_dir / "artifacts").rglob("*.npz"))
    assert size < 100_000


class Boom(Exception):
    pass


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt, SystemExit])
def test_every_way_out_releases_the_lock_and_keeps_finished_tasks(bench_dir, tmp_path, error, capsys):
    config = _config(bench_dir, tmp_path)
    run_dir = tmp_path / config.run_name()

    def fail(index, state):
        if index == 1:
            raise error()

    with pytest.raises(error):
        run(config, on_task_end=fail)
    assert not (run_dir / "run.lock").exists()
    assert json.loads((run_dir / "state" / "progress.json").read_text())["completed"] == 2
    capsys.readouterr()
    result = run(config)
    assert "resuming after task 2 of 3" in capsys.readouterr().err
    assert result["resumed_at"] == [2] and not (run_dir / "run.lock").exists()
    run(config)
    assert "finished already" in capsys.readouterr().err


def test_a_run_that_fails_before_writing_leaves_no_folder(bench_dir, tmp_path, monkeypatch):
    import migu.bench.runner as runner

    def broken(*args, **kwargs):
        raise ValueError("model source unreadable")

    monkeypatch.setattr(runner, "load_model", broken)
    with pytest.raises(ValueError, match="unreadable"):
        run(_config(bench_dir, tmp_path / "out"))
    assert not list((tmp_path / "out").glob("*"))


def test_a_state_written_by_an_older_migu_resumes(bench_dir, tmp_path):
    config = _config(bench_dir, tmp_path)
    run_dir = tmp_path / config.run_name()
    full = run(_config(bench_dir, tmp_path / "full"))

    def stop(index, state):
        if index == 0:
            raise Boom

    with pytest.raises(Boom):
        run(config, on_task_end=stop)
    progress = json.loads((run_dir / "state" / "progress.json").read_text())
    progress["rows"] = progress.pop("scores")["rows"]["accuracy"]  # the single-matrix state of before
    (run_dir / "state" / "progress.json").write_text(json.dumps(progress))
    resumed = run(config)
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"]


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-llama"])
def test_a_two_domain_corpus_run_fills_a_lower_is_better_perplexity_matrix(tmp_path, model):
    root = tmp_path / "data"
    for domain, words in (("d1", "cats purr and sleep in the sun"), ("d2", "stocks fell as markets closed")):
        (root / domain).mkdir(parents=True)
        for split in ("train", "test"):
            rows = [{"text": f"{words} {i} {words}"} for i in range(6)]
            (root / domain / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = run_config({
        "model": model, "method": "finetune+migu", "output_dir": str(tmp_path / "out"), "progress": False,
        "data": {"source": "jsonl", "kind": "corpus", "root": str(root), "order": ["d1", "d2"], "n_train": 4,
                 "n_test": 3},
        "train": {"lr": 1e-3, "batch_size": 2, "micro_batch_size": 2, "max_length": 16, "eval_batch_size": 2},
    })  # fmt: skip
    result = run(config)
    assert "accuracy_matrix" not in result and result["kind"] == "corpus"
    ppl = result["score_matrices"]["perplexity"]
    assert ppl["higher_is_better"] is False and ppl["columns"] == ["d1", "d2"]
    assert len(ppl["matrix"]) == 3 and all(len(r) == 2 and all(v > 1 for v in r) for r in ppl["matrix"])
    loss = result["score_matrices"]["loss"]["matrix"]
    assert ppl["matrix"] == [[pytest.approx(np.exp(v)) for v in row] for row in loss]
    assert ppl["matrix"][1][0] < ppl["matrix"][0][0]  # training on d1 lowers d1's perplexity
    assert result["metrics"] == result["score_metrics"]["loss"]
