"""A run killed within a task of several epochs resumes after its last finished epoch and ends with
exactly the numbers of an uninterrupted run: weights, optimizer, scheduler and the methods' state
within the task (MIGU's generator and kept-row record, DER++'s stream) are saved at every epoch end."""

import json

import numpy as np
import pytest

from migu.artifacts import load_artifacts
from migu.bench import run, run_config
from migu.bench.store import RunStore


class Killed(Exception):
    pass


def _config(bench_dir, out, method, every, batch):
    return run_config({
        "model": "tiny-bert",
        "method": method,
        "seed": 0,
        "data": {"root": str(bench_dir), "order": "tiny", "n_train": 16, "n_test": 8, "evaluate_every": every},
        "methods": {"migu": {"threshold": 0.5}, "replay": {"fraction": 0.25}},
        "train": {"lr": 1e-3, "batch_size": batch, "micro_batch_size": 4, "max_length": 32, "eval_batch_size": 8,
                  "epochs": 3, "schedule": "linear"},
        "output_dir": str(out),
        "progress": False,
    })  # fmt: skip


def _kill_after(monkeypatch, checkpoint):
    save = RunStore.save_progress

    def save_then_die(self, state, payload, name):
        save(self, state, payload, name)
        if name == checkpoint:
            raise Killed

    monkeypatch.setattr(RunStore, "save_progress", save_then_die)


def _same(a, b):
    for key in ("score_matrices", "diagnostics", "curves"):
        assert a.get(key) == b.get(key), key
    for field in ("mean_loss", "steps", "examples"):
        assert [t.get(field) for t in a["timings"]] == [t.get(field) for t in b["timings"]], field


@pytest.mark.parametrize(
    ("method", "every", "batch"),
    [
        ("finetune+random_update", "task", 8),
        ("derpp+migu", "task", 8),
        ("lora+migu", "epoch", 4),
        ("finetune+replay", "task", 8),
    ],
)
def test_killed_within_a_task_resumes_after_its_epoch(bench_dir, tmp_path, monkeypatch, method, every, batch):
    full = run(_config(bench_dir, tmp_path / "a", method, every, batch))
    config = _config(bench_dir, tmp_path / "b", method, every, batch)
    run_dir = tmp_path / "b" / config.run_name()
    with monkeypatch.context() as patch:
        _kill_after(patch, "task2_epoch2.pt")
        with pytest.raises(Killed):
            run(config)
    progress = json.loads((run_dir / "state" / "progress.json").read_text())
    assert progress["completed"] == 1 and progress["in_task"] == {"epoch": 2}
    assert sorted(p.name for p in (run_dir / "state").iterdir()) == ["progress.json", "task2_epoch2.pt"]
    resumed = run(config)
    assert resumed["resumed_at"] == [1]
    assert resumed["timings"][2]["resumed_after_epoch"] == 2 and "resumed_after_epoch" not in full["timings"][2]
    _same(full, resumed)
    if every == "epoch":  # before training, epochs 1 and 2 and the end of each of the three tasks
        assert len(resumed["curves"]["points"]) == 1 + 3 * 3
    if "migu" in method:
        a, b = (load_artifacts(d / config.run_name(), "kept_rows") for d in (tmp_path / "a", tmp_path / "b"))
        assert a.keys() == b.keys() and len(a) == 2  # tasks 2 and 3 (the first is unmasked)
        for task in a:
            assert a[task].keys() == b[task].keys()
            assert all(np.array_equal(a[task][k], b[task][k]) for k in a[task])


def test_a_single_epoch_task_saves_only_at_its_end(bench_dir, tmp_path, monkeypatch):
    names = []
    save = RunStore.save_progress
    monkeypatch.setattr(
        RunStore, "save_progress", lambda self, s, p, name: (names.append(name), save(self, s, p, name))
    )
    config = _config(bench_dir, tmp_path, "finetune", "task", 8)
    run(run_config({**config.to_dict(), "train": {**config.to_dict()["train"], "epochs": 1}}))
    assert names == ["after_task1.pt", "after_task2.pt", "after_task3.pt"]
