"""A benchmark queue: a list of runs worked through in order, resumable, shareable by processes.

Every benchmark script that keeps a long list of runs (``benchmarks/cl_long.py``,
``benchmarks/fair.py``) hands its checked configs to ``run_queue``: a run already finished is
skipped, an unfinished one resumes after its last finished task, a run another process holds is
skipped (so the same command can run twice side by side, one per core), and a folder that holds
another config's run stops the queue before anything trains.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..signals import Stopped, stop_on_signals
from .config import RunConfig
from .fingerprint import fingerprint_matches
from .runner import RunInProgress, load_tasks, run
from .store import RunStore

DIFFERENT = "different config"


def run_folder(config: RunConfig) -> Path:
    """Where ``config``'s run lives: ``output_dir/run_name``."""
    return Path(config.output_dir) / config.run_name()


def run_status(config: RunConfig, check_data: bool = False) -> str:
    """``done``, ``done through task N`` or ``pending``, followed by ``, running (pid N on HOST)``
    while a process holds the run; ``different config`` when the folder holds another config's run
    (a changed setting or rate), which the queue must not take as this run's; with ``check_data``
    (another data root), also when it was trained on other data."""
    folder = run_folder(config)
    state = "pending"
    for path in (folder / "results.json", folder / "state" / "progress.json"):
        if path.is_file():
            saved = json.loads(path.read_text())
            if not fingerprint_matches(saved, config):
                return DIFFERENT
            if check_data and saved.get("data_digest") not in (None, load_tasks(config).digest()):
                return DIFFERENT
            if path.name == "results.json":
                return "done"
            state = f"done through task {saved.get('completed', 0)}"
            break
    holder = RunStore(folder).holder()
    return f"{state}, running ({holder})" if holder else state


def task_logger(name: str) -> Callable[[int, dict[str, Any]], None]:
    """An ``on_task_end`` hook printing one line per finished task (time, steps, loss)."""

    def log(index: int, state: dict[str, Any]) -> None:
        timing = state["timings"][-1]
        print(f"   {name}: task {index + 1} {timing.get('task')}: train {timing.get('seconds', 0):.0f} s "
              f"({timing.get('steps')} steps, loss {timing.get('mean_loss', float('nan')):.4f}), "
              f"eval {timing.get('eval_seconds', 0):.0f} s  [{time.strftime('%H:%M:%S')}]", flush=True)  # fmt: skip

    return log


def matching(configs: Sequence[RunConfig], only: str | None) -> list[RunConfig]:
    """The runs whose ``FOLDER/RUN`` (as ``--list`` prints it) contains ``only`` (all for None)."""
    return [c for c in configs if only is None or only in f"{run_folder(c).parent.name}/{c.run_name()}"]


def run_queue(configs: Sequence[RunConfig], prog: str, list_only: bool = False, check_data: bool = False,
              only: str | None = None) -> int:  # fmt: skip
    """Work through ``configs`` in order (see the module docstring); ``list_only`` prints each run's
    state and trains nothing; ``only`` keeps the runs whose ``FOLDER/RUN`` (as listed) contains it
    (none: status 2). Returns the exit status: 0; 2 when a folder holds another config's
    run (before anything trains) or a run was refused (the others still ran); 128 + the signal's
    number when SIGTERM, SIGHUP or SIGINT stopped it (``migu.signals``: the running run keeps its
    finished tasks and leaves no lock)."""
    if only:
        configs = matching(configs, only)
        if not configs:
            print(f"{prog}: no run of the queue matches --only {only!r}", file=sys.stderr)
            return 2
    try:
        with stop_on_signals():
            return _work(configs, prog, list_only, check_data)
    except Stopped as stop:
        print(f"{prog}: {stop}: finished tasks are kept; run the same command again to continue", file=sys.stderr)
        return stop.exit_status


def _work(configs: Sequence[RunConfig], prog: str, list_only: bool, check_data: bool) -> int:
    clashes = [run_folder(c) for c in configs if run_status(c, check_data) == DIFFERENT]
    if clashes and not list_only:
        print(f"{prog}: {clashes[0]} holds a run of a different config ({len(clashes)} such folder(s)); "
              "use another --out", file=sys.stderr)  # fmt: skip
        return 2
    skipped = refused = 0
    for config in configs:
        name, folder = config.run_name(), run_folder(config)
        state = run_status(config, check_data)
        print(f"== {folder.parent.name}/{name}  lr {config.train.lr:g}  [{state}]  {time.strftime('%H:%M:%S')}",
              flush=True)  # fmt: skip
        if list_only or state == "done":
            continue
        start = time.perf_counter()
        try:
            result = run(config, on_task_end=task_logger(name))
        except RunInProgress as err:
            print(f"   skipped: {err}", flush=True)
            skipped += 1
            continue
        except ValueError as err:  # (e.g. a folder holding a run on other data): the rest of the queue goes on
            print(f"   refused: {err}", flush=True)
            refused += 1
            continue
        m, minutes = result.get("metrics") or {}, (time.perf_counter() - start) / 60
        print(f"   {name}: AA {m.get('aa', float('nan')):.2f}  BWT {m.get('bwt', float('nan')):.2f}  "
              f"({len(result['sequence'])} tasks, {minutes:.1f} min)", flush=True)  # fmt: skip
    if skipped:
        print(f"{skipped} run(s) skipped: another process holds them", flush=True)
    if refused:
        print(f"{prog}: {refused} run(s) refused (see above)", file=sys.stderr)
        return 2
    return 0
