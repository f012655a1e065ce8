"""A sequence on two CPU processes (gloo): same matrix as one process, one writer, resumable."""

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from migu.bench import run

from launch import kill_a_rank_after, launch
from test_runner import _config


def _launch(config_path: Path) -> subprocess.Popen:
    return launch("torch.distributed.run", "--standalone", "--nproc_per_node=2", args=[str(config_path)])


def test_two_processes_give_the_matrix_of_one_and_resume_after_a_killed_rank(bench_dir, tmp_path):
    # micro-batches of 4: each of the two ranks trains on 2 examples of every micro-batch; no
    # dropout, whose masks are drawn per process (measured: parameters then differ by 4e-6 after
    # a task, float summation order; with dropout by 4e-3)
    train = {"lr": 1e-2, "batch_size": 8, "micro_batch_size": 4, "max_length": 32, "eval_batch_size": 8,
             "dropout": 0.0}  # fmt: skip
    scores = {"classification": {}, "embedding_geometry": {}}  # (the latter gathers tensors across ranks)
    single = _config(bench_dir, tmp_path / "one", train=train)
    single.evaluators = scores
    one = run(single)
    config = _config(bench_dir, tmp_path / "two", train=train)
    config.evaluators = scores
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    run_dir = tmp_path / "two" / config.run_name()

    # kill one rank while it trains the second task; torchrun then stops the other
    kill_a_rank_after(_launch(path), run_dir, tasks=1)
    assert not (run_dir / "results.json").exists()
    killed_at = json.loads((run_dir / "state" / "progress.json").read_text())["completed"]
    assert 1 <= killed_at < 3

    proc = _launch(path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert err.count(f"resuming after task {killed_at} of 3") == 1  # said once, by rank 0
    results = sorted((tmp_path / "two").rglob("results.json"))
    assert results == [run_dir / "results.json"] and not (run_dir / "run.lock").exists()
    two = json.loads(results[0].read_text())
    assert two["resumed_at"] == [killed_at]
    # the same global batches: the same predictions (tolerance: none needed at this size)
    assert two["accuracy_matrix"] == one["accuracy_matrix"]
    assert two["score_matrices"]["macro_f1"] == one["score_matrices"]["macro_f1"]
    # the recorded training loss is the whole batches' on every rank count (before: rank 0's share)
    losses = [[t["mean_loss"] for t in r["timings"] if t.get("task")] for r in (one, two)]
    assert losses[1][0] == pytest.approx(losses[0][0], rel=1e-5)  # (first task: the same weights throughout)
    assert losses[1] == pytest.approx(losses[0], rel=0.05)  # (later: parameters differ by float order)
    # geometry gathers embeddings across ranks: on the same model (before training) it matches one
    # process to float error (after training the runs' parameters differ by ~1e-6, which the
    # near-collapsed embeddings of this rate amplify to ~1e-3 in these scores)
    for name in ("input_cosine", "label_cosine", "option_spread"):
        first = two["score_matrices"][name]["matrix"][0]
        assert first == pytest.approx(one["score_matrices"][name]["matrix"][0], abs=1e-6), name
        assert None not in first


@pytest.mark.parametrize("micro", [3])
def test_a_micro_batch_that_does_not_split_evenly_is_refused(bench_dir, tmp_path, micro):
    config = _config(bench_dir, tmp_path, train={"lr": 1e-3, "batch_size": 6, "micro_batch_size": micro,
                                                 "max_length": 32, "eval_batch_size": 8})  # fmt: skip
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    _, err = _launch(path).communicate(timeout=240)
    assert "train.micro_batch_size (3) must be a multiple of the number of processes (2)" in err
    assert not list((tmp_path).glob("tiny-bert*"))


def test_processes_that_read_other_data_at_the_same_root_are_refused_on_every_rank(bench_dir, tmp_path):
    """Two "nodes" (here: working folders) hold other files at the same relative data.root: both
    processes stop with the same line and status 2, before anything is written."""
    import os
    import shutil
    import socket
    import sys

    from launch import ROOT

    for node in ("node0", "node1"):
        shutil.copytree(bench_dir, tmp_path / node / "data")
    test = tmp_path / "node1" / "data" / "TC" / "alpha" / "test.json"  # one test label differs
    rows = json.loads(test.read_text())
    rows[0]["label"] = rows[1]["label"]
    test.write_text(json.dumps(rows))
    config = _config(Path("data"), tmp_path / "out", train={"lr": 1e-3, "batch_size": 8, "micro_batch_size": 4,
                                                             "max_length": 32, "eval_batch_size": 8})  # fmt: skip
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": "0",
               "LOCAL_WORLD_SIZE": "1"}  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, "-m", "migu", "run", str(path)], cwd=tmp_path / f"node{rank}",
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))  # fmt: skip
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 2, err[-3000:]
        assert "data.root: process(es) 1 read other examples than process 0" in err
    assert not (tmp_path / "out").exists()
