"""Hostile completions against the code sandbox (issue 41). Each attack runs in one batch with an
honest right and an honest wrong completion: the attack fails, the honest ones are scored as ever.
Most attacks first switch the Python guard off (it is no boundary: the operating system must
hold). The namespace cases need util-linux and namespaces; the guard-only ones, run as root, an
interpreter that nobody can run."""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from migu.evaluators import build_evaluators, sandbox
from migu.evaluators.sandbox import ExecResult, SandboxLimits, run_program, run_programs, sandbox_mode
from migu.evaluators.sandbox_scripts import NOBODY

LIMITS = SandboxLimits(timeout=10.0, cpu_seconds=5)
GUARD_ONLY = SandboxLimits(timeout=10.0, cpu_seconds=5, namespaces=False, allow_unisolated=True)
RIGHT = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a - b\n"
TESTS = "\nassert add(2, 3) == 5\n"
UNGUARDED = ("import sys\nguard = sys.modules['__main__']\nguard.BANNED = ()\nguard.PATHS = {}\n"
             "guard.inside = lambda path: True\nimport os\n")  # fmt: skip
confined = pytest.mark.skipif(sandbox_mode() != "namespaces",
                              reason=f"no namespace sandbox here ({sandbox._probe()[1]})")  # fmt: skip
unisolated = pytest.mark.filterwarnings("ignore:migu sandbox:RuntimeWarning")


def attempt(attack: str, limits: SandboxLimits = LIMITS, python: str | None = None) -> ExecResult:
    """The attack's result, run beside an honest right and wrong completion scored as ever."""
    right, wrong, hostile = run_programs([RIGHT + TESTS, WRONG + TESTS, attack], limits, workers=2, python=python)
    assert (right.status, wrong.status) == ("passed", "failed"), (right, wrong)
    return hostile


@pytest.fixture(scope="module")
def guard_python() -> str:
    """The interpreter of the guard-only mode: run by root, code runs as nobody, who must be able to run it."""
    if os.geteuid() != 0:
        return sys.executable
    for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        try:
            done = subprocess.run([candidate, "-I", "-c", "import resource"], cwd="/", capture_output=True,
                                  user=NOBODY, group=NOBODY, extra_groups=[])  # fmt: skip
        except OSError:
            continue
        if done.returncode == 0:
            return candidate
    pytest.skip(f"no interpreter that nobody (uid {NOBODY}) can run, as the guard-only mode run by root needs")


@pytest.fixture
def shared_dir():
    """A folder anyone may use, so that only the sandbox (no file permission) keeps the code out."""
    folder = Path(tempfile.mkdtemp(prefix="migu-attack-"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder)


@confined
def test_host_sockets_are_out_of_reach(shared_dir):
    listeners = []
    for family, address in ((socket.AF_UNIX, str(shared_dir / "host.sock")),  # as /run/docker.sock
                            (socket.AF_UNIX, f"\0migu-{secrets.token_hex(8)}"),  # abstract: per network namespace
                            (socket.AF_INET, ("127.0.0.1", 0))):  # fmt: skip
        listener = socket.socket(family)
        listener.bind(address)
        listener.listen()
        listener.setblocking(False)
        listeners.append(listener)
        if family == socket.AF_UNIX and not address.startswith("\0"):
            os.chmod(address, 0o777)
        target = listener.getsockname()
        attack = UNGUARDED + f"import socket\nsocket.socket({int(family)}).connect({target!r})\n" + RIGHT + TESTS
        result = attempt(attack)
        assert result.status == "failed", (target, result)
    for listener in listeners:
        with pytest.raises(BlockingIOError):  # nothing ever connected
            listener.accept()
        listener.close()


FORGE = """import os
for fd in range(256):
    try:
        os.write(fd, {payload})
    except OSError:
        pass
os._exit(0)
"""
ECHO = """import os
seen = b""
for fd in range(3, 256):
    try:
        os.set_blocking(fd, False)
        seen += os.read(fd, 4096)
    except OSError:
        pass
for fd in range(256):
    try:
        os.write(fd, seen)
    except OSError:
        pass
os._exit(0)
"""


@pytest.mark.parametrize("mode", ["namespaces", "guard"])
@pytest.mark.parametrize(
    "forgery",
    [FORGE.format(payload=repr(b"migu-sandbox-done")), FORGE.format(payload="os.urandom(16).hex().encode()"), ECHO],
    ids=["writes the old mark everywhere", "writes a guessed nonce everywhere", "echoes every descriptor"],
)
@unisolated
def test_a_forged_verdict_is_not_a_pass(mode, forgery, request):
    if mode == "namespaces" and sandbox_mode() != "namespaces":
        pytest.skip(f"no namespace sandbox here ({sandbox._probe()[1]})")
    limits, python = (LIMITS, None) if mode == "namespaces" else (GUARD_ONLY, request.getfixturevalue("guard_python"))
    for prefix in ("", UNGUARDED):
        result = attempt(prefix + RIGHT + forgery + TESTS, limits, python)  # right, but its tests never ran
        assert result.status == "failed" and result.returncode == 0, result


def test_code_that_cannot_be_isolated_is_refused_unless_allowed(monkeypatch):
    with pytest.raises(RuntimeError, match=r"cannot be isolated here \(namespaces switched off\).*allow_unisolated"):
        run_program(RIGHT + TESTS, SandboxLimits(namespaces=False))
    monkeypatch.setattr(sandbox, "_probe", lambda: ("guard", "unshare: a test without namespaces"))
    with pytest.raises(RuntimeError, match=r"unshare: a test without namespaces\).*allow_unisolated: true"):
        build_evaluators({"pass_at_1": {}}, "instruction")  # (at build time: before any training)
    with pytest.warns(RuntimeWarning, match="guard alone"):
        build_evaluators({"humaneval": {"allow_unisolated": True}}, "instruction")


@unisolated
def test_guard_only_writes_through_a_folder_descriptor_are_blocked(shared_dir, guard_python):
    outside = ("import os\n"
               f"d = os.open({str(shared_dir)!r}, os.O_RDONLY)\n"
               "os.close(os.open('planted.txt', os.O_WRONLY | os.O_CREAT, 0o666, dir_fd=d))\n"
               "os.stat('planted.txt', dir_fd=d)\n")  # fmt: skip
    upward = ("import os\nd = os.open('.', os.O_RDONLY)\nos.makedirs('a/b')\nos.chdir('a/b')\n"
              "os.close(os.open('../planted.txt', os.O_WRONLY | os.O_CREAT, 0o666, dir_fd=d))\n"  # (a/planted.txt?)
              "os.stat('../planted.txt', dir_fd=d)\n")  # fmt: skip
    for attack in (outside, upward):
        result = attempt(RIGHT + attack + TESTS, GUARD_ONLY, guard_python)
        assert result.status == "blocked", result
    assert not (shared_dir / "planted.txt").exists()


root_only = pytest.mark.skipif(os.geteuid() != 0, reason="run by another user, the code runs as that user")


@root_only
@unisolated
def test_guard_only_code_does_not_run_as_root(guard_python):
    result = attempt("import os\nassert os.geteuid() == 0\n" + RIGHT + TESTS, GUARD_ONLY, guard_python)
    assert result.status == "failed" and "AssertionError" in result.stderr, result


@root_only
@unisolated
def test_guard_only_code_starts_nothing_that_outlives_it(guard_python):
    tag = f"{3 + time.time_ns() % 10**6 / 10**6:.6f}"  # a sleep no other process runs (ends on its own)
    outlive = UNGUARDED + f"assert os.system(\"setsid sh -c 'sleep {tag}' > /dev/null 2>&1 &\") == 0\n"
    outlive += "import time\ntime.sleep(0.3)\n"  # (so that setsid is done before the group is killed)
    result = attempt(outlive + RIGHT + TESTS, GUARD_ONLY, guard_python)
    time.sleep(0.5)
    found = subprocess.run(["pgrep", "-f", f"sleep {tag}"], capture_output=True, text=True).stdout.split()
    for pid in found:  # (what this test started, should it have escaped)
        os.kill(int(pid), signal.SIGKILL)
    assert not found, "a process of the program outlived its run"
    assert result.status == "failed", result


@confined
def test_code_does_not_run_as_root():
    result = attempt("import os\nassert os.geteuid() == 0 or os.getuid() == 0\n" + RIGHT + TESTS)
    assert result.status == "failed" and "AssertionError" in result.stderr, result


@confined
def test_a_fork_bomb_stops_at_its_first_fork():
    bomb = UNGUARDED + "for _ in range(20):\n    if os.fork() == 0:\n        os._exit(0)\n    os.wait()\n"
    result = attempt(bomb + RIGHT + TESTS)  # (a bounded bomb: twenty forks)
    assert result.status == "failed" and "Resource temporarily unavailable" in result.stderr, result


@confined
def test_the_view_cannot_be_made_writable(tmp_path):
    remount = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\ndef call(result):\n"
               "    if result != 0:\n        raise OSError(ctypes.get_errno(), 'failed')\n")  # fmt: skip
    escape = f"open({str(tmp_path / 'escaped.txt')!r}, 'w').write('out')\n"
    attacks = [remount + "call(libc.mount(None, b'/', None, 32 | 4096, None))\n",  # MS_REMOUNT | MS_BIND
               remount + "call(libc.unshare(0x10000000 | 0x20000))\n"  # in a user namespace of its own
               "call(libc.mount(None, b'/', None, 32 | 4096, None))\n"]  # fmt: skip
    for attack in attacks:
        result = attempt(UNGUARDED + attack + escape + RIGHT + TESTS)
        assert result.status == "failed" and "OSError" in result.stderr, result
    assert not (tmp_path / "escaped.txt").exists()


RUN_AS_USER = """import json, sys
sys.path.insert(0, sys.argv[1])
from copied.sandbox import SandboxLimits, run_programs, sandbox_mode, _probe
if sandbox_mode() != "namespaces":
    print(json.dumps(_probe()[1]))
else:
    results = run_programs(json.loads(sys.argv[2]), SandboxLimits(timeout=10.0, cpu_seconds=5), workers=2)
    print(json.dumps([[r.status, r.confined, r.stderr[-300:]] for r in results]))
"""


@root_only
def test_a_user_that_is_not_root_gets_the_same_sandbox(shared_dir, guard_python):
    """Run by another user, the init is root of a user namespace and the code nobody in a nested
    one: the same attacks fail (the sandbox's two modules, copied, under an interpreter that user can run)."""
    package = shared_dir / "copied"
    package.mkdir()
    for name in ("__init__.py", "sandbox.py", "sandbox_scripts.py"):
        source = Path(sandbox.__file__).with_name(name)
        (package / name).write_text("" if name == "__init__.py" else source.read_text())
    (shared_dir / "run.py").write_text(RUN_AS_USER)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(shared_dir / "host.sock"))
    listener.listen()
    os.chmod(shared_dir / "host.sock", 0o777)
    escaped = shared_dir / "escaped.txt"
    attacks = {
        "passed": RIGHT + TESTS,
        "failed": WRONG + TESTS,
        "uid": "import os\nassert os.geteuid() == 0 or os.getuid() == 0\n",
        "socket": UNGUARDED + f"import socket\nsocket.socket(socket.AF_UNIX).connect({listener.getsockname()!r})\n",
        "fork": UNGUARDED + "if os.fork() == 0:\n    os._exit(0)\n",
        "remount": UNGUARDED + "import ctypes\nassert ctypes.CDLL(None).mount(None, b'/', None, 32 | 4096, None) == 0\n"
        f"open({str(escaped)!r}, 'w').write('out')\n",
        "forged": RIGHT + FORGE.format(payload="b'x'") + TESTS,
    }
    programs = json.dumps(list(attacks.values()))
    done = subprocess.run([guard_python, "-I", str(shared_dir / "run.py"), str(shared_dir), programs],
                          cwd=shared_dir, capture_output=True, text=True, user=NOBODY - 1, group=NOBODY - 1,
                          extra_groups=[], env={"PATH": "/usr/bin:/bin"}, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    if isinstance(results, str):
        pytest.skip(f"no namespace sandbox for a user that is not root here ({results})")
    got = {name: status for name, (status, confined_, _) in zip(attacks, results, strict=True) if confined_}
    assert got == {name: "passed" if name == "passed" else "failed" for name in attacks}, results
    with pytest.raises(BlockingIOError):
        listener.setblocking(False)
        listener.accept()
    listener.close()
    assert not escaped.exists()
