"""What produced a result: library versions, the source revision and the CPU.

A long run may be resumed in later sessions, on other machines and other code; results.json
records each segment's source and CPU (``code``), so that a wall time can be read beside the
machine that took it.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

# the features that decide how fast a CPU step is: wide vectors and native bf16 matrix products
_FEATURES = ("avx512f", "avx512_bf16", "amx_bf16")


def versions() -> dict[str, str]:
    """The versions of migu, torch, the Hugging Face libraries and Python."""
    import accelerate
    import peft
    import transformers

    import migu

    return {
        "migu": migu.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
    }


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name with its family and model numbers (several generations share one
    name, e.g. "AMD EPYC" for Zen 3 and Zen 5) and its wide-vector features, from /proc/cpuinfo:
    e.g. ``AMD EPYC (family 26, model 2; avx512f, avx512_bf16)``."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    for line in lines:
        if not line.strip():
            break  # the first processor's block describes them all
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "flags" not in fields:  # not an x86 CPU (aarch64 lists "Features" and no family)
        return name
    flags = fields["flags"].split()
    features = [f for f in _FEATURES if f in flags] or ["AVX2 only" if "avx2" in flags else "no AVX2"]
    return f"{name} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')}; {', '.join(features)})"


def source_revision() -> str | None:
    """The git commit of the checkout migu runs from, ``+dirty`` if its tracked source files
    (``src``, ``configs``, ``benchmarks/*.py``) differ from it; None outside a git checkout."""
    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        return None
    try:
        commit = _git(root, "rev-parse", "--short=12", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no", "--", "src", "configs", "benchmarks/*.py")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20,
                          check=True).stdout.strip()  # fmt: skip
