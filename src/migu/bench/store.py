"""One run's folder: lock, progress, checkpoints, results and artifacts, written atomically.

    RUN_DIR/run.lock          held (fcntl) while a process runs the run; removed on every way out
    RUN_DIR/state/            progress.json + the checkpoint it names; deleted when the run ends
    RUN_DIR/results.json      the finished run (its presence means "done")
    RUN_DIR/artifacts/        per-task arrays of the methods (``migu.artifacts``)
    RUN_DIR/model/            the trained model, with ``save_model: true`` (``save_pretrained``)

Only the main process writes (``is_main``); the other ranks of a several-process run read the
same folder (a shared filesystem) when they resume.
"""

from __future__ import annotations

import json
import os
import pickle
import platform
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

from .. import artifacts
from ..schema import check_schema

RESULTS = "results.json"
LOCK = "run.lock"


class RunInProgress(RuntimeError):
    """Another process is running the same run (same output folder and name)."""


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically: a reader sees the old file or the new one, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def read_json(path: Path, what: str = "file") -> Any:
    """A JSON file, or one clear error naming it and what to do."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}); restore or delete that "
                         f"{what}") from None  # fmt: skip


class RunStore:
    """The folder of one run."""

    def __init__(self, run_dir: str | Path, is_main: bool = True) -> None:
        self.dir = Path(run_dir)
        self.is_main = is_main
        self.state_dir = self.dir / "state"

    # --- lock -----------------------------------------------------------------------------------
    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold ``run.lock`` for the run, so that two processes never train or write the same run
        (a second one raises ``RunInProgress``). The file is removed on every way out, error and
        interrupt included; a killed process leaves it unlocked (the lock dies with it)."""
        if not self.is_main:
            yield
            return
        try:
            import fcntl
        except ImportError:  # no POSIX locks (Windows): no protection against a concurrent twin
            yield
            return
        created = not self.dir.exists()
        path = self.dir / LOCK
        with self._lock_file(path, fcntl) as handle:
            try:
                handle.seek(0)
                handle.truncate()
                handle.write(f"pid {os.getpid()} on {platform.node()}\n")
                handle.flush()
                yield
            finally:
                path.unlink(missing_ok=True)
                if created and not any(self.dir.iterdir()):
                    self.dir.rmdir()  # a run that failed before writing anything leaves no folder

    def holder(self) -> str | None:
        """Who runs the run now (``pid N on HOST``, as its ``run.lock`` says), read without taking
        the lock; None when no live process on this machine holds it. A holder on another machine
        is taken at its word."""
        try:
            holder = (self.dir / LOCK).read_text().strip()
        except (FileNotFoundError, NotADirectoryError):
            return None
        pid, _, host = holder.removeprefix("pid ").partition(" on ")
        if host == platform.node():
            try:
                os.kill(int(pid), 0)
            except (ValueError, ProcessLookupError):
                return None  # a stale file (its process was killed): the lock died with it
            except PermissionError:
                pass  # alive, another user's
        return holder or None

    def _lock_file(self, path: Path, fcntl: Any) -> IO[str]:
        """``path`` opened and locked, and still the file at ``path``: a holder that ends between
        this process's open and lock removes the file it locked (and, having written nothing, the
        folder), and a lock on a removed file guards nothing, so that case opens again."""
        for _ in range(5):
            self.dir.mkdir(parents=True, exist_ok=True)
            try:
                handle = open(path, "a+")  # noqa: SIM115 (returned: the caller closes it)
            except FileNotFoundError:  # the folder went away with its last holder
                continue
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip()
                handle.close()
                raise RunInProgress(f"{self.dir} is being run by another process ({holder})") from None
            try:
                current = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                current = False
            if current:
                return handle
            handle.close()
        raise RunInProgress(f"{self.dir}: its lock changed hands five times in a row; start again")

    # --- results --------------------------------------------------------------------------------
    def finished(self) -> dict[str, Any] | None:
        path = self.dir / RESULTS
        if not path.is_file():
            return None
        results = read_json(path, "results file")
        check_schema(results, path)
        return results

    def write_results(self, results: dict[str, Any]) -> None:
        if self.is_main:
            write_json(self.dir / RESULTS, results)
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def save_model(self, model: Any, tokenizer: Any, state_dict: dict[str, Any] | None = None) -> Path | None:
        """The trained model as Transformers and PEFT save it (a PEFT model: its adapters only;
        ``state_dict``: the gathered weights of a sharded model) with its tokenizer, into
        ``model/``; written beside it first and renamed, so that ``model/`` is whole or absent."""
        if not self.is_main:
            return None
        final, tmp = self.dir / "model", self.dir / ".model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            if hasattr(model, "save_pretrained"):
                model.save_pretrained(tmp, state_dict=state_dict)
            else:  # a migu wrapper (MaskedLM) keeps the Hugging Face model's names and config
                tmp.mkdir(parents=True)
                model.config.save_pretrained(tmp)
                torch.save(state_dict if state_dict is not None else model.state_dict(), tmp / "pytorch_model.bin")
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
        except BaseException:  # a full disk, an interrupt: no half-written model is left behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        return final

    # --- progress and checkpoints ---------------------------------------------------------------
    def load_progress(self) -> dict[str, Any] | None:
        path = self.state_dir / "progress.json"
        if not path.is_file():
            return None
        state = read_json(path, "unfinished run's state folder")
        if not isinstance(state, dict) or not {"fingerprint", "completed", "checkpoint"} <= state.keys():
            raise ValueError(f"{path} is not the progress of a migu run (damaged?): restore it, or delete "
                             f"{self.state_dir} to start the run over")  # fmt: skip
        return state

    def load_checkpoint(self, name: str) -> Any:
        """A checkpoint of the state folder; a missing or damaged one is one line naming it and the
        ways out (restore it, or start the run over)."""
        path = self.state_dir / name
        # on the CPU: every rank reads the file rank 0 wrote; loading moves tensors to their devices
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except FileNotFoundError:
            problem = "is missing"
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, ValueError) as err:
            problem = f"is damaged ({type(err).__name__}: {' '.join(str(err).split())[:120]})"
        raise ValueError(f"{path} {problem}: restore it, or delete {self.state_dir} to start the run over")

    def save_progress(self, state: dict[str, Any], checkpoint: Any, name: str) -> None:
        """The checkpoint first, under a name of its own, then the progress that points to it;
        the previous checkpoint goes last. An interruption anywhere leaves a consistent pair."""
        if not self.is_main:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / f".{name}.tmp"
        torch.save(checkpoint, tmp)
        os.replace(tmp, self.state_dir / name)
        previous = state.get("checkpoint")
        state["checkpoint"] = name
        write_json(self.state_dir / "progress.json", state)
        if previous and previous != name:
            (self.state_dir / previous).unlink(missing_ok=True)

    # --- artifacts ------------------------------------------------------------------------------
    def save_artifacts(self, task_index: int, task: str, method: str, items: Mapping[str, Mapping[str, Any]]) -> None:
        if self.is_main:
            for name, arrays in items.items():
                artifacts.save_artifact(self.dir / "artifacts", task_index, task, method, name, arrays)

    def artifact_index(self) -> list[dict[str, Any]]:
        return artifacts.read_index(self.dir / "artifacts")["items"]
