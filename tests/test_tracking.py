"""Experiment trackers: a tiny run with ``log_with: [tensorboard]`` writes event files that
TensorBoard's own reader reads back, with the right values at the right steps; bad tracker
settings are one line; a resumed run continues the step count; the Trainer callback's MIGU
diagnostics reach the Trainer's loggers."""

from __future__ import annotations

import json

import pytest

from migu.bench import run
from migu.bench.tracking import check_log_with
from migu.cli import main

from test_runner import _config

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator", reason="tensorboard is not installed (dev extra)"
)


def read_events(folder):
    """Every scalar (tag -> [(step, value)]) and image (tag -> [step]) under ``folder``."""
    scalars, images = {}, {}
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        acc = event_accumulator.EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
        for tag in acc.Tags()["images"]:
            images.setdefault(tag, []).extend(e.step for e in acc.Images(tag))
    return scalars, images


def test_a_run_logs_to_tensorboard(bench_dir, tmp_path):
    result = run(_config(bench_dir, tmp_path, log_with="tensorboard"))
    run_dir = tmp_path / "tiny-bert_finetune+migu_tiny_seed0"
    scalars, images = read_events(run_dir / "logs")
    steps = [t["steps"] for t in result["timings"] if t["task"] is not None]
    ends = [sum(steps[: i + 1]) for i in range(len(steps))]  # the run's step at each task's end
    total = ends[-1]
    # every optimizer step's loss, numbered over the whole run
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, total + 1))
    assert all(v > 0 for _, v in scalars["train/loss"])
    # MIGU's kept share at each masked step: not in the first task (trained unmasked)
    kept = scalars["train/migu/kept_fraction"]
    assert [s for s, _ in kept] == list(range(ends[0] + 1, total + 1))
    assert all(0.2 < v < 0.4 for _, v in kept)  # T = 0.7: about 30% of the rows kept
    # each evaluation point's scores, at step 0 and at each task's last step, equal the results'
    matrix = result["accuracy_matrix"]
    for column, task in enumerate(result["sequence"]):
        logged = scalars[f"scores/accuracy/{task}"]
        assert [s for s, _ in logged] == [0, *ends]
        assert [v for _, v in logged] == pytest.approx([row[column] for row in matrix], abs=1e-5)
    assert scalars["metrics/accuracy/aa"][-1] == (total, pytest.approx(result["metrics"]["aa"], abs=1e-4))
    assert scalars["metrics/accuracy/bwt"][-1] == (total, pytest.approx(result["metrics"]["bwt"], abs=1e-4))
    assert [s for s, _ in scalars["time/train_seconds"]] == ends
    # the accuracy matrix as an image after every evaluation point
    assert images["matrix/accuracy"] == [0, *ends]
    # the config, once
    hparams = list((run_dir / "logs").rglob("hparams.yml"))
    assert len(hparams) == 1
    assert {"train.lr: 0.001", "data.order: tiny", "method: finetune+migu"} <= set(hparams[0].read_text().splitlines())


def test_trackers_do_not_change_the_run(bench_dir, tmp_path):
    plain = run(_config(bench_dir, tmp_path / "a"))
    logged = run(_config(bench_dir, tmp_path / "b", log_with=["tensorboard"]))
    assert plain["accuracy_matrix"] == logged["accuracy_matrix"]
    assert plain["fingerprint"] == logged["fingerprint"]  # not part of the run's identity


def test_a_resumed_run_continues_the_step_count(bench_dir, tmp_path):
    class Stop(Exception):
        pass

    def stop_after_first(index, state):
        if index == 0:
            raise Stop

    config = _config(bench_dir, tmp_path, log_with=["tensorboard"])
    with pytest.raises(Stop):
        run(config, on_task_end=stop_after_first)
    result = run(config)
    scalars, _ = read_events(tmp_path / "tiny-bert_finetune+migu_tiny_seed0" / "logs")
    total = sum(t["steps"] for t in result["timings"] if t["task"] is not None)
    assert sorted(s for s, _ in scalars["train/loss"]) == list(range(1, total + 1))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("tensorbored", "log_with: unknown tracker 'tensorbored'"),
        (3, "log_with must be a list or a text, got 3"),
        ([3], r"log_with must be a list or a text, got \[3\]"),
    ],
)
def test_bad_tracker_settings(bench_dir, tmp_path, value, message):
    with pytest.raises(ValueError, match=message):
        _config(bench_dir, tmp_path, log_with=value)


def test_a_tracker_not_installed_is_one_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ValueError, match=r"log_with: wandb is not installed \(pip install wandb\)"):
        check_log_with(["wandb"])


def test_cli_log_with(bench_dir, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    raw = {"model": "tiny-bert", "method": "finetune", "data": {"root": str(bench_dir), "order": "tiny",
           "n_train": 8, "n_test": 4}, "train": {"batch_size": 4, "micro_batch_size": 4, "max_length": 32},
           "output_dir": str(tmp_path / "runs"), "progress": False}  # fmt: skip
    config.write_text(json.dumps(raw))
    assert main(["run", str(config), "--log-with", "tensorboard"]) == 0
    assert list((tmp_path / "runs").rglob("events.out.tfevents.*"))
    assert main(["run", str(config), "name=other", "--log-with", "nope"]) == 2
    assert "log_with: unknown tracker 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "other").exists()


def test_trainer_callback_reports_through_the_trainers_loggers(tmp_path):
    """``report_to=tensorboard``: MIGU's diagnostics are in the Trainer's own event files."""
    import warnings

    from transformers import Trainer, TrainingArguments

    import migu

    from tiny import batch, build

    model = build("bert")
    data = batch("bert", size=16, length=8)
    dataset = [{k: v[i] for k, v in data.items()} for i in range(16)]
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=["tensorboard"],
                             logging_steps=1, save_strategy="no", use_cpu=True, remove_unused_columns=False,
                             per_device_train_batch_size=4, max_steps=3, learning_rate=1e-3)  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=dataset)
    callback = migu.add_migu_callback(trainer, threshold=0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    scalars, _ = read_events(tmp_path / "out")  # (the Trainer's TensorBoard folder: OUTPUT_DIR/runs/...)
    kept = scalars["train/migu/kept_fraction"]
    assert [s for s, _ in kept] == [1, 2, 3]
    assert all(0.2 < v < 0.4 for _, v in kept)
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3]
    assert callback.handle is None
