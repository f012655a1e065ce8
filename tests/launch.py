"""Launching ``migu run`` on two CPU processes, and killing one rank at a task boundary."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).parents[1]


def launch(*launcher: str, args: list[str]) -> subprocess.Popen:
    """``python -m LAUNCHER... -m migu run ARGS`` with this checkout's sources, one thread a rank."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    cmd = [sys.executable, "-m", *launcher, "-m", "migu", "run", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_a_rank_after(proc: subprocess.Popen, run_dir: Path, tasks: int = 1, timeout: float = 300) -> str:
    """SIGKILL one rank once ``tasks`` tasks are saved (the launcher then stops the others); the
    launcher's stderr."""
    progress = run_dir / "state" / "progress.json"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if progress.is_file() and json.loads(progress.read_text())["completed"] >= tasks:
            ranks = [c for c in psutil.Process(proc.pid).children(recursive=True) if "migu" in " ".join(c.cmdline())]
            os.kill(ranks[-1].pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, "the run ended before a rank could be killed: " + err[-2000:]
    return err
