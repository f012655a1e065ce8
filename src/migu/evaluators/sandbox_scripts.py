"""The programs ``migu.evaluators.sandbox`` runs around a model's code (its docstring says what
each one enforces): the Python guard that runs the code, the shell init that builds the private
file system view, and the command lines that start them."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

GUARD_EXIT = 86
"""Exit status of a program the guard stopped."""
SETUP_FAILED = 97
"""Exit status of the namespace init when it could not confine the program (with a line on stderr)."""
NOBODY = 65534
"""The unprivileged user and group the code runs as (nobody/nogroup), unless migu itself is not root."""

GUARD = r"""
import os, resource, sys
SCRATCH = os.path.realpath(os.getcwd())
EXIT = int(sys.argv[2])
BANNED = ("socket.", "subprocess.", "os.system", "os.exec", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn",
          "os.kill", "os.killpg", "resource.prlimit", "pty.spawn", "ctypes.", "os.symlink",
          "os.startfile", "_winapi.")
PATHS = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.link": (0, 1),
         "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,),
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
    name = os.fsdecode(path)
    if not os.path.isabs(name) and os.pardir in name.split(os.sep):
        return False  # (relative to a folder's descriptor, not the working folder, ".." may leave the scratch)
    real = os.path.realpath(name)
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
        folder = mode is None and os.path.isdir(name)  # (os.open: a folder's descriptor is a dir_fd for writes)
        if (writes or folder) and not inside(path):
            stop(("writing " if writes else "opening the folder ") + name)
    elif event in PATHS:
        for i in PATHS[event]:
            if i < len(args) and isinstance(args[i], (str, bytes, os.PathLike)) and not inside(args[i]):
                stop(event + " " + repr(args[i]))

class NoStdin:
    def __getattr__(self, name):
        stop("reading stdin (sys.stdin." + name + ")")

def run(program, nonce_fd, verdict_fd, cpu, memory, files):
    nonce = os.read(nonce_fd, 64)  # (written before this process started; a local, never a global)
    os.close(nonce_fd)
    for which, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_AS, (memory, memory)),
                         (resource.RLIMIT_FSIZE, (files, files)), (resource.RLIMIT_NPROC, (0, 0)),
                         (resource.RLIMIT_CORE, (0, 0))):
        resource.setrlimit(which, value)
    code = compile(open(program, encoding="utf-8").read(), program, "exec")
    sys.dont_write_bytecode = True
    sys.stdin = NoStdin()
    sys.argv = [program]
    sys.addaudithook(hook)
    exec(code, {"__name__": "__sandboxed__", "__builtins__": __builtins__})
    os.write(verdict_fd, nonce)

run(sys.argv[1], int(sys.argv[3]), int(sys.argv[4]), *(int(v) for v in sys.argv[5].split(",")))
"""

# PID 1 of the namespaces: a fresh tmpfs as the root of a view holding only the system folders,
# the interpreter and the program's files (bound read-only), /dev's harmless devices, a /proc of
# the new PID namespace and the scratch tmpfs (owned by the user the code runs as); then
# pivot_root into it, the old root detached, and the program started as a child (never exec'd:
# the program is never the namespace's init), its status as ours
INIT = r"""
fail() { echo "migu sandbox: setup failed: $1" >&2; exit 97; }
scratch=$1; disk=$2; owner=$3; new=$4; binds=$5; shift 5
set -f; umask 022; path=$PATH; PATH=/usr/sbin:/usr/bin:/sbin:/bin
ro() { mount -o remount,bind,ro,nosuid,nodev "$1" 2>/dev/null ||
       mount -o remount,bind,ro,nosuid,nodev,noexec "$1" 2>/dev/null || fail "read-only $1"; }
mount --make-rprivate / || fail "private mounts"
mount -t tmpfs -o size=1m,mode=0755 migu-view "$new" || fail "tmpfs on $new"
IFS='
'
for p in $binds; do
    if [ -L "$p" ]; then ln -s "$(readlink "$p")" "$new$p" || fail "link $p"; continue; fi
    if [ -d "$p" ]; then mkdir -p "$new$p"; else mkdir -p "$new${p%/*}" && : > "$new$p"; fi || fail "mount point $p"
    mount --bind "$p" "$new$p" || fail "bind $p"
    ro "$new$p"
done
unset IFS
mkdir "$new/dev" "$new/proc" && mkdir -p "$new$scratch" || fail "mount points"
for d in null zero full random urandom; do
    : > "$new/dev/$d" && mount --bind "/dev/$d" "$new/dev/$d" || fail "/dev/$d"
done
ln -s /proc/self/fd "$new/dev/fd" && ln -s fd/0 "$new/dev/stdin" && ln -s fd/1 "$new/dev/stdout" &&
    ln -s fd/2 "$new/dev/stderr" || fail "/dev links"
mount -t proc -o nosuid,nodev,noexec proc "$new/proc" || fail "proc"
mount -t tmpfs -o "size=${disk}m,mode=0700,uid=$owner,gid=$owner,nosuid,nodev" migu-scratch "$new$scratch" ||
    fail "tmpfs on $scratch"
ro "$new"
cd "$new" && pivot_root . . && umount -l . && cd / || fail "pivot_root"
cd "$scratch" || fail "cd $scratch"
PATH=$path "$@"
"""

_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
_NAMESPACES = ["--net", "--ipc", "--uts", "--pid", "--fork", "--kill-child", "--mount", "--propagation", "private"]


def _covered(path: str, by: Sequence[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in by)


def view_paths(python: str, files: Sequence[str | Path] = ()) -> list[str]:
    """What the program's file system holds besides /dev, /proc and its scratch folder: the system
    folders, the interpreter's prefix (the folder above ``bin``) at each hop of its symbolic
    links (with the running interpreter's ``sys.prefix`` and ``sys.base_prefix``), and ``files``."""
    chosen = [p for p in _SYSTEM if os.path.lexists(p)]
    path = os.path.abspath(shutil.which(python) or python)
    prefixes: list[str] = []
    for _ in range(40):
        folder = os.path.dirname(path)
        prefix = os.path.dirname(folder) if os.path.basename(folder) == "bin" else folder
        prefixes.append(folder if prefix == "/" else prefix)
        if not os.path.islink(path):
            break
        path = os.path.normpath(os.path.join(folder, os.readlink(path)))
    if os.path.realpath(path) == os.path.realpath(sys.executable):
        prefixes += [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    for extra in sorted({os.path.normpath(p) for p in prefixes if os.path.isdir(p)}, key=len):
        if not _covered(extra, chosen):
            chosen.append(extra)
    chosen += [os.path.abspath(f) for f in files]
    odd = next((p for p in chosen if "\n" in p), None)
    if odd is not None:
        raise ValueError(f"migu sandbox: a path with a line break cannot be shown to the program: {odd!r}")
    return chosen


def confined(argv: Sequence[str], base: Path, disk_mb: int, binds: Sequence[str]) -> list[str]:
    """The command that runs ``argv`` in new namespaces, in the view of ``binds`` with
    ``base/work`` as its scratch tmpfs (``base/view`` is where the view is built), as ``NOBODY``.

    Run by root: no user namespace (root may create the others), and ``setpriv`` drops to nobody
    (no capabilities left, no new privileges), so RLIMIT_NPROC holds. Run by another user: a user
    namespace maps that user to root for the init, and a second one inside it, entered by the
    program, maps it to nobody, so the program holds no capability over the first."""
    if os.geteuid() == 0:
        outer = ["unshare", *_NAMESPACES]
        drop = [f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=-all",
                "--bounding-set=-all", "--no-new-privs", "--"]  # fmt: skip
        owner = NOBODY
    else:
        outer = ["unshare", "--user", "--map-root-user", *_NAMESPACES]
        drop = ["--no-new-privs", "--", "unshare", "--user", f"--map-user={NOBODY}", f"--map-group={NOBODY}", "--"]
        owner = 0  # (the init's root: nobody in the program's namespace)
    return [*outer, "sh", "-c", INIT, "migu-init", str(base / "work"), str(disk_mb), str(owner), str(base / "view"),
            "\n".join(binds), "setpriv", *drop, *argv]  # fmt: skip
