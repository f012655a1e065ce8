"""Impossible numbers and values are refused when the config loads: one line naming the key,
exit status 2, nothing written (before, ``data.n_train=-5`` trained on all but five examples and
``train.lr=inf`` trained to NaN and wrote results)."""

import pytest
import yaml

from migu.cli import main
from migu.train import TrainConfig


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=inf", "train.lr must be a finite number, got inf"),
        ("train.lr=nan", "train.lr must be a finite number, got nan"),
        ("train.lr=0", "train.lr must be greater than 0, got 0"),
        ("train.weight_decay=-1", "train.weight_decay must be at least 0, got -1"),
        ("train.max_grad_norm=-1", "train.max_grad_norm must be at least 0, got -1"),
        ("train.warmup_ratio=1", "train.warmup_ratio must be at most"),
        ("data.n_train=-5", "data.n_train must be at least 1, got -5"),
        ("data.n_validation=-3", "data.n_validation must be at least 0, got -3"),
        ("data.n_test=-5", "data.n_test must be at least 1, got -5"),
        ("train.schedule=cos", "train.schedule must be one of constant, linear, cosine; got 'cos'"),
        ("evaluation=beam", "evaluation must be one of generate, rank; got 'beam'"),
        ("data.evaluate_every=step", "data.evaluate_every must be one of task, epoch; got 'step'"),
    ],
)
def test_impossible_values_are_one_line_naming_the_key(tmp_path, capsys, override, message):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": "tiny-bert", "output_dir": str(tmp_path / "runs")}))
    assert main(["run", str(config), override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "runs").exists()


def test_a_config_built_in_python_is_checked_by_the_same_checker():
    with pytest.raises(ValueError, match=r"train\.mixed_precision must be one of no, bf16; got 'fp16'"):
        TrainConfig(mixed_precision="fp16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"train\.epochs must be at least 1"):
        TrainConfig(epochs=0)


def test_a_loss_that_turns_non_finite_stops_the_run_with_one_line(bench_dir, tmp_path, capsys):
    """A rate that is finite but far too high trains to NaN: the run stops at that step, names the
    task and step, writes no results and keeps its last finished task for a resume."""
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model": "tiny-bert", "method": "finetune", "output_dir": str(tmp_path / "runs"), "progress": False,
        "data": {"root": str(bench_dir), "order": "tiny", "n_train": 16, "n_test": 8},
        "train": {"lr": 1.0e12, "batch_size": 4, "micro_batch_size": 4, "max_length": 32, "max_grad_norm": None},
    }))  # fmt: skip
    assert main(["run", str(config)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("migu:")]
    assert len(err) == 1 and "the training loss is nan" in err[0].lower() and "step" in err[0], err
    left = [p.name for p in (tmp_path / "runs").rglob("*")] if (tmp_path / "runs").exists() else []
    assert "results.json" not in left and "run.lock" not in left  # (failing in task 1: nothing to keep)
