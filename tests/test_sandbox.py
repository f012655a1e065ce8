"""The code sandbox against programs that try to fake a pass, outlive their run, reach migu's
process or write outside their folder (the namespace cases need unprivileged user namespaces)."""

import os
import subprocess
import time

import pytest

from migu.evaluators import sandbox
from migu.evaluators.sandbox import SandboxLimits, check_sandbox, run_program, sandbox_mode

LIMITS = SandboxLimits(timeout=10.0, cpu_seconds=5)
RIGHT = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a - b\n"
TESTS = "\nassert add(2, 3) == 5\n"
confined = pytest.mark.skipif(sandbox_mode() != "namespaces",
                              reason=f"no namespace sandbox here ({sandbox._probe()[1]})")  # fmt: skip


@confined
@pytest.mark.parametrize(
    "program",
    [
        WRONG + "import sys\nsys.exit(0)\n" + TESTS,  # leaves before its tests with status 0
        WRONG + "import os\nos._exit(0)\n" + TESTS,
        WRONG + "import atexit, os\natexit.register(lambda: os._exit(0))\n" + TESTS,  # status 0 after failing
        RIGHT + "import sys\nsys.exit(0)\n" + TESTS,  # right, but its tests never ran
    ],
)
def test_an_exit_before_the_end_is_not_a_pass(program):
    result = run_program(program, LIMITS)
    assert result.status == "failed" and result.returncode == 0, result


@confined
def test_main_blocks_are_skipped_and_devnull_is_writable():
    program = RIGHT + "if __name__ == '__main__':\n    raise SystemExit(0)\nprint('x', file=open('/dev/null', 'w'))"
    assert run_program(program + TESTS, LIMITS).passed


@confined
def test_a_sandbox_that_cannot_run_python_is_an_error():
    check_sandbox(LIMITS)
    with pytest.raises(RuntimeError, match="does not work"):  # an interpreter that runs nothing
        check_sandbox(LIMITS, python="/bin/false")


@confined
def test_migu_is_out_of_reach():
    me = os.getpid()  # (not visible inside)
    # its parent is the namespace's init, and it sees no other process
    program = ("import os\nassert os.getppid() == 1\n"
               "assert {p for p in os.listdir('/proc') if p.isdigit()} == {'1', str(os.getpid())}\n")  # fmt: skip
    assert run_program(program, LIMITS).passed
    # with the guard switched off from inside (it is no boundary), the kernel still stops a signal
    unguarded = "import sys\nsys.modules['__main__'].BANNED = ()\nimport os, signal\n"
    result = run_program(unguarded + f"os.kill({me}, signal.SIGUSR1)\n", LIMITS)
    assert result.status == "failed" and "ProcessLookupError" in result.stderr, result


@confined
def test_nothing_it_starts_outlives_it(tmp_path):
    tag = f"{time.time_ns() % 10**6}.5"  # a sleep no other process runs
    program = ("import sys\nsys.modules['__main__'].BANNED = ()\nimport os\n"
               f"os.system(\"setsid sh -c 'sleep {tag}' > /dev/null 2>&1 &\")\n")  # fmt: skip
    assert run_program(program, LIMITS).passed
    time.sleep(0.5)
    found = subprocess.run(["pgrep", "-f", f"sleep {tag}"], capture_output=True, text=True)
    assert found.stdout.strip() == "", "a process of the program outlived its run"


@confined
def test_it_writes_nowhere_but_its_folder_and_not_much_there(tmp_path):
    unguarded = "import sys\nsys.modules['__main__'].BANNED = ()\nsys.modules['__main__'].SCRATCH = ''\nimport os\n"
    # migu's folders are not in its view, and those that are (the system's, the interpreter's) are read-only
    for folder, error in ((tmp_path, "No such file or directory"), ("/etc", "Read-only file system")):
        planted = unguarded + (f"d = os.open({str(folder)!r}, os.O_RDONLY)\n"
                               "os.close(os.open('migu-planted.txt', os.O_WRONLY | os.O_CREAT, dir_fd=d))\n"
                               )  # fmt: skip
        result = run_program(planted, LIMITS)
        assert result.status == "failed" and error in result.stderr, result
    assert not (tmp_path / "migu-planted.txt").exists() and not os.path.exists("/etc/migu-planted.txt")
    fill = "for i in range(40):\n    open(f'f{i}', 'wb').write(b'x' * 1000000)\n"  # 40 MB: over disk_mb
    result = run_program(fill, SandboxLimits(timeout=10.0, disk_mb=16))
    assert result.status == "failed" and "No space left on device" in result.stderr, result
