"""SIGTERM, SIGHUP and SIGINT stop a run at once: one line, exit status 128 + the signal, no lock
left, every finished task kept; the same command then resumes to the numbers of an uninterrupted
run (``migu.signals``)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent


def _config(bench_dir: Path, out: Path) -> Path:
    train = {"lr": 1e-3, "batch_size": 4, "micro_batch_size": 4, "max_length": 32, "eval_batch_size": 8}
    data = {"root": str(bench_dir), "order": "tiny", "n_train": 24, "n_test": 8}
    config = {"model": "tiny-bert", "method": "finetune+slow", "seed": 0, "progress": False, "output_dir": str(out),
              "data": data, "train": train}  # fmt: skip
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _start(config: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(HERE)}
    return subprocess.Popen([sys.executable, str(HERE / "slow_run.py"), str(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _interrupt(config: Path, run_dir: Path, signum: int) -> str:
    """Start the run, send ``signum`` once its first task is saved, return its stderr."""
    proc = _start(config)
    progress = run_dir / "state" / "progress.json"
    deadline = time.monotonic() + 240
    while not (progress.is_file() and json.loads(progress.read_text()).get("completed", 0) >= 1):
        assert proc.poll() is None, "the run ended before the signal: " + proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no task finished in time"
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-2000:]
    return err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stop_signal_keeps_finished_tasks_and_leaves_no_lock(bench_dir, tmp_path, signum):
    out = tmp_path / "runs"
    config = _config(bench_dir, out)
    run_dir = out / "tiny-bert_finetune+slow_tiny_seed0"
    err = _interrupt(config, run_dir, signum)
    name = signal.Signals(signum).name
    lines = [line for line in err.splitlines() if line.startswith("migu:")]
    assert lines == [f"migu: stopped by {name}: every finished task (and epoch) is kept; run the same command "
                     "again to resume"]  # fmt: skip
    assert "Traceback" not in err
    assert not (run_dir / "run.lock").exists() and not (run_dir / "results.json").exists()
    assert json.loads((run_dir / "state" / "progress.json").read_text())["completed"] >= 1
    if signum != signal.SIGTERM:
        return
    resumed = _start(config)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    whole = _start(_config(bench_dir, tmp_path / "whole"))
    _, err = whole.communicate(timeout=300)
    assert whole.returncode == 0, err[-2000:]
    a = json.loads((run_dir / "results.json").read_text())
    b = json.loads((tmp_path / "whole" / run_dir.name / "results.json").read_text())
    assert a["resumed_at"] and a["accuracy_matrix"] == b["accuracy_matrix"]
    assert [t.get("mean_loss") for t in a["timings"]] == [t.get("mean_loss") for t in b["timings"]]
