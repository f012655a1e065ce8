"""Two CPU processes (gloo), different data per rank: same masks, same weights."""

import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import migu

from tiny import batch, build

HERE = Path(__file__).parent


def test_two_process_ddp_same_masks_and_parameters(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(HERE / "ddp_worker.py"),
        str(tmp_path),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for step, (kept0, kept1) in enumerate(zip(r0["kept"], r1["kept"], strict=True)):
        for name, rows in kept0.items():
            assert torch.equal(rows, kept1[name]), (step, name)
            # the mask is that of the statistic summed over both ranks' data
            total = r0["local_sums"][step][name] + r1["local_sums"][step][name]
            assert torch.equal(rows, (total >= torch.quantile(total, 0.7)).nonzero().flatten()), (step, name)
        # and the ranks' own statistics alone would have disagreed somewhere
    assert any(
        not torch.equal(
            (s0 >= torch.quantile(s0, 0.7)).nonzero().flatten(),
            (s1 >= torch.quantile(s1, 0.7)).nonzero().flatten(),
        )
        for step in range(3)
        for s0, s1 in zip(r0["local_sums"][step].values(), r1["local_sums"][step].values(), strict=True)
    )
    for name, p in r0["params"].items():
        assert torch.equal(p, r1["params"][name]), name


def test_no_distributed_call_without_process_group(monkeypatch):
    assert not dist.is_initialized()

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.distributed was called without a process group")

    monkeypatch.setattr(dist, "all_reduce", forbidden)
    monkeypatch.setattr(dist, "get_world_size", forbidden)
    model = build("bert")
    handle = migu.attach(model)
    model(**batch("bert")).loss.backward()
    handle.before_optimizer_step()
    handle.after_optimizer_step()


def test_a_loss_non_finite_on_one_rank_stops_every_rank(tmp_path):
    """Rank 1 alone sees NaN: both ranks stop at the same step with the one-line error, instead of
    rank 0 waiting forever in the next collective."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "nan_rank_worker.py"), str(tmp_path)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    outcomes = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert all(o.startswith("stopped: task 1 (t), step 2: the training loss is") for o in outcomes), outcomes
    assert "nan" in outcomes[1] and "another process" in outcomes[0]
