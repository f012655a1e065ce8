"""Where a MIGU step's time goes: one training step of a speed case, plain vs MIGU's fast path vs
MIGU's dense (reference) path, split by torch.profiler into the parts MIGU adds.

    python benchmarks/profile_step.py --case minilm_full --out benchmarks/results/speed/profile_<cpu>.json
    python benchmarks/profile_step.py --table benchmarks/results/speed/profile_<cpu>.json

The cases are those of ``benchmarks/speed.py`` (``--case minilm_full_bf16`` runs under bf16
autocast). MIGU's hooks are annotated with ``migu.core.profiling`` scopes, which cost nothing when
no profiler runs. Every operator's self time is charged to the innermost MIGU scope it runs in
(``statistic``: |output| summed over tokens in the forward hook; ``wrap``: handing the output to the
fast path; ``weight_grad``: the fast path's backward, split into matmul, gather, scatter (zeros +
index_copy), casts and the rest; ``select``: ranking rows; ``mask``: the masking pass before the
step; ``restore``: update mode), or, outside them, to matmuls, casts, the optimizer step or
"other"; the Python time of a scope is its own self time (what no operator inside accounts for).
Times are per step, averaged over ``--steps`` profiled steps after warm-up; the profiler adds its
own overhead per operator, so the unprofiled median step time of each variant is given beside.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from speed import CASES, VARIANTS, _prepare, _step, cpu_name

MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_mkldnn_matmul", "aten::mkldnn_linear"}
CAST = {"aten::to", "aten::_to_copy", "aten::copy_"}
GATHER = {"aten::gather", "aten::index_select"}
SCATTER = {"aten::index_copy_", "aten::zeros_like", "aten::zero_", "aten::fill_", "aten::zeros", "aten::empty_like"}


def _op_kind(name: str) -> str:
    if name in MATMUL:
        return "matmul"
    if name in CAST:
        return "cast"
    if name in GATHER:
        return "gather"
    if name in SCATTER:
        return "scatter"
    return "rest"


def _scope_of(event) -> str | None:
    node = event
    while node is not None:
        if node.name.startswith("migu."):
            return node.name
        node = node.cpu_parent
    return None


def breakdown(events, steps: int) -> dict[str, float]:
    """Milliseconds per step by part (module docstring)."""
    parts: dict[str, float] = defaultdict(float)
    for event in events:
        self_ms = event.self_cpu_time_total / 1000 / steps
        if event.name.startswith("migu."):
            parts[f"{event.name[5:]}: python"] += self_ms
            continue
        scope = _scope_of(event)
        if scope is None:
            if event.name.startswith("Optimizer.step") or _under(event, "Optimizer.step"):
                parts["optimizer step"] += self_ms
            elif _op_kind(event.name) in ("matmul", "cast"):
                parts[_op_kind(event.name)] += self_ms
            else:
                parts["other"] += self_ms
        elif scope == "migu.fast.weight_grad":
            parts[f"fast.weight_grad: {_op_kind(event.name)}"] += self_ms
        else:
            parts[scope[5:]] += self_ms
    return dict(sorted(parts.items()))


def _under(event, prefix: str) -> bool:
    node = event.cpu_parent
    while node is not None:
        if node.name.startswith(prefix):
            return True
        node = node.cpu_parent
    return False


def profile_case(name: str, steps: int, warmup: int, repeats: int, threshold: float) -> dict[str, object]:
    torch.manual_seed(0)
    model, make_batch, loss_fn = CASES[name]()
    bf16 = name.endswith("_bf16")
    runs = {v: _prepare(v, copy.deepcopy(model), threshold)[:2] for v in VARIANTS}
    del model
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for i in range(warmup + repeats):
        batch = make_batch()
        for v, (m, opt) in runs.items():
            start = time.perf_counter()
            _step(m, opt, batch, bf16, loss_fn)
            if i >= warmup:
                times[v].append(time.perf_counter() - start)
    out: dict[str, object] = {}
    for v, (m, opt) in runs.items():
        batches = [make_batch() for _ in range(steps)]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for batch in batches:
                _step(m, opt, batch, bf16, loss_fn)
        parts = breakdown(prof.events(), steps)
        out[v] = {
            "step_ms": 1000 * statistics.median(times[v]),
            "step_ms_spread": 1000 * (max(times[v]) - min(times[v])),
            "profiled_ms": sum(parts.values()),
            "parts_ms": parts,
        }
    return out


def table(path: str) -> str:
    with open(path) as f:
        data = json.load(f)
    lines = []
    for case, variants in data.items():
        if case.startswith("_"):
            continue
        names = sorted({p for v in variants.values() for p in v["parts_ms"]})
        lines += [f"**{case}** ({data['_meta']['cpu']}, {data['_meta']['threads']} thread(s))", ""]
        lines += ["| part (ms per step) | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
        for part in names:
            lines.append(
                f"| {part} | " + " | ".join(f"{v['parts_ms'].get(part, 0.0):.1f}" for v in variants.values()) + " |"
            )
        lines.append(
            "| **profiled total** | " + " | ".join(f"{v['profiled_ms']:.0f}" for v in variants.values()) + " |"
        )
        lines.append(
            "| unprofiled step (median) | " + " | ".join(f"{v['step_ms']:.0f}" for v in variants.values()) + " |"
        )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="minilm_full", help=f"comma list of {', '.join(CASES)}")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="unprofiled steps per variant for the step time")
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--out", help="JSON file (cases already in it are kept)")
    parser.add_argument("--table", help="print the markdown table of a JSON file and exit")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    results: dict[str, object] = {}
    if args.out and Path(args.out).exists():
        results = json.loads(Path(args.out).read_text())
    for name in args.case.split(","):
        if name not in CASES:
            parser.error(f"unknown case {name!r}; choose from {', '.join(CASES)}")
        results[name] = profile_case(name, args.steps, args.warmup, args.repeats, args.threshold)
        results["_meta"] = {
            "cpu": cpu_name(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
        }
        print(json.dumps({name: results[name]}, indent=1), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
