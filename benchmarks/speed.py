"""Step time and peak memory of MIGU vs plain finetuning, and the cost of each row score.

    python benchmarks/speed.py --out benchmarks/results/speed/speed.json [--cases a,b] [--repeats 10]
    python benchmarks/speed.py --cases batch8 --scores --fisher --out FILE.json   # issues 40 and 38
    python benchmarks/speed.py --table benchmarks/results/speed/speed.json    # markdown tables

Cases: ``speed_cases.py`` (``--cases`` takes names and the groups ``batch8``, ``batch16``).
Time: one process per case and round (``--rounds``); a plain model and identical copies with MIGU
attached through their optimizers take interleaved training steps (forward, backward, AdamW step
as ``train.optim`` or ``--optim`` makes it), median of ``--repeats`` steps each after warm-up.
``migu`` is the default (fast path: the loop declares one micro-batch per optimizer step);
``migu_dense`` forces the reference path (dense weight gradients, then masking). ``--scores``
adds one copy per other row score (issue 38), interleaved with the same steps: ``random``
(``selection="random"``), ``gradient`` (the row norm of the step's own weight gradient) and
``given`` (the Fisher method's per-step cost: ``selection="given"``, scores set once with
``set_row_scores``, here ``fisher_rows`` of the case's first batch); none of them has the fast
path, which is magnitude's alone. ``--fisher`` times what the Fisher method adds once per task:
``empirical_fisher`` on the method's default sample (``fisher_examples`` per-example backwards) of
a MiniLM task, against plain steps at the paper protocol's micro-batch in the same process.
Memory (plain, migu, migu_dense): each variant runs alone in a fresh subprocess (glibc mmap
threshold fixed, so that freed memory leaves the process); its peak resident memory during 3
steps minus the resident memory before the first step (after loading the code of MIGU's
operators, the same in every variant).
Output: ``{case: {"time_ratio", "memory_ratio", "dense_time_ratio", "dense_memory_ratio",
"random_time_ratio", ...}, "_fisher": {...}}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from speed_cases import (
    CASES,
    DEFAULT,
    MIGU_SETTINGS,
    SCORE_VARIANTS,
    SEQ,
    TARGETS,
    VARIANTS,
    Block,
    BlockStack,
    Loss,
    _batch_loss,
    _step,
    groups,
)
from speed_fisher import PAPER_CONFIG, measure_fisher
from speed_table import table

import migu
from migu.bench.provenance import cpu_name, source_revision
from migu.core.report import kept_share
from migu.methods.fisher import FisherConfig, fisher_rows
from migu.train import TrainConfig, make_optimizer
from migu.train.config import OPTIMIZERS

# (the cases and the table, for profile_step.py, gpu_speed_check.py and the tests)
__all__ = ["CASES", "TARGETS", "Block", "BlockStack", "_step", "table"]
OPTIM = TrainConfig().optim


def _prepare(
    variant: str,
    model: nn.Module,
    threshold: float,
    optim: str = OPTIM,
    batch: dict | None = None,
    loss_fn: Loss | None = None,
) -> tuple[nn.Module, torch.optim.Optimizer, migu.MiguHandle | None]:
    """The variant's model and optimizer, as migu's training loop makes it (``train.optim``); the
    ``given`` variant's row scores are the Fisher method's (``fisher_rows``) on ``batch``."""
    model.train()
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], TrainConfig(lr=1e-5, optim=optim))
    handle = None
    if variant != "plain":
        handle = migu.attach(model, threshold=threshold, optimizer=opt, micro_batches_per_step=1,
                             **MIGU_SETTINGS[variant])  # type: ignore[arg-type]  # fmt: skip
    if variant == "given":
        assert handle is not None
        if batch is None:
            raise ValueError("the given variant needs a batch for its row scores")
        with handle.paused():  # as FisherRows.before_task: the estimate's forwards are no training steps
            handle.set_row_scores(fisher_rows(model, handle.sources, lambda m, chunk: _batch_loss(m, chunk[0], loss_fn),
                                              [batch]))  # fmt: skip
    return model, opt, handle


def flop_limit(model: nn.Module, batch: dict, loss_fn: Loss | None, threshold: float) -> dict[str, float]:
    """The time ratio MIGU's fast path would reach if a step's time were its matmul FLOPs: the
    weight-gradient FLOPs of the rows it skips (2 x tokens x in x out per fast-path layer, times
    the share of rows dropped), against every matmul FLOP of a plain training step (forward and
    backward, counted by torch's FlopCounterMode; the optimizer and elementwise work not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    from migu.core import find_sources
    from migu.core.targets import fast_path_layer

    sources = [s for s in find_sources(model, migu.MiguConfig(threshold=threshold)) if fast_path_layer(s)]
    tokens: dict[int, int] = {}
    hooks = [
        s.module.register_forward_hook(
            lambda m, args, out, i=i: tokens.__setitem__(i, tokens.get(i, 0) + args[0].numel() // args[0].shape[-1])
        )
        for i, s in enumerate(sources)
    ]
    model.train()
    with FlopCounterMode(display=False) as counter:
        _batch_loss(model, batch, loss_fn).backward()
    for hook in hooks:
        hook.remove()
    model.zero_grad(set_to_none=True)
    total = counter.get_total_flops()
    saved = 0.0
    for i, source in enumerate(sources):
        weight = source.targets[0].weight
        rows = source.rows()
        dropped = math.ceil(threshold * (rows - 1)) / rows
        saved += dropped * 2 * tokens.get(i, 0) * weight.numel()
    return {"flop_limit": (total - saved) / total, "matmul_gflop": total / 1e9}


def _selection(handle: migu.MiguHandle) -> dict[str, object]:
    """What a MIGU variant did in its steps: its score, the layers on the fast path, the share of
    rows kept at the last step and the mean Jaccard overlap of consecutive steps' kept rows."""
    overlaps = [r.mean_jaccard for r in handle.report().values() if r.mean_jaccard is not None]
    return {
        "selection": handle.config.selection,
        "fast_path_layers": len(handle.fast_path_layers),
        "kept_share": kept_share(handle.kept_masks()),
        "mean_jaccard": statistics.fmean(overlaps) if overlaps else None,
    }


def measure_time(
    name: str,
    repeats: int,
    warmup: int,
    threshold: float,
    optim: str = OPTIM,
    variants: tuple[str, ...] = VARIANTS,
    seq: int = SEQ,
) -> dict[str, object]:
    """One round: interleaved steps of ``plain`` and ``variants`` (the tests time fewer than
    ``plain``, ``migu`` and ``migu_dense``, which the script always times)."""
    variants = tuple(dict.fromkeys(("plain", *variants)))
    torch.manual_seed(0)
    model, make_batch, loss_fn = CASES[name](seq=seq)
    first = make_batch()
    limit = flop_limit(copy.deepcopy(model), first, loss_fn, threshold)
    runs = {v: (*_prepare(v, copy.deepcopy(model), threshold, optim, first, loss_fn), []) for v in variants}
    del model
    for i in range(warmup + repeats):
        batch = make_batch()  # the same batch for every variant within a repetition
        for m, opt, _, times in runs.values():
            start = time.perf_counter()
            _step(m, opt, batch, name.endswith("_bf16"), loss_fn)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    med = {v: statistics.median(t) for v, (_, _, _, t) in runs.items()}
    handle = runs["migu"][2] if "migu" in runs else None
    kernels = sorted(set(handle.fast_path_kernels().values())) if handle is not None else []
    ratios = {"migu": "time_ratio", "migu_dense": "dense_time_ratio", **{v: f"{v}_time_ratio" for v in SCORE_VARIANTS}}
    return {
        **{ratios[v]: med[v] / med["plain"] for v in variants if v != "plain"},
        **{f"{v}_step_s": med[v] for v in variants},
        "repeats": repeats,
        "seq": seq,
        "batch_shape": list(next(v for v in first.values() if isinstance(v, torch.Tensor)).shape),  # (batch, tokens)
        **limit,
        "kernels": kernels,
        "selections": {v: _selection(h) for v, (_, _, h, _) in runs.items() if h is not None},
    }


def _child(*args: object) -> dict:
    out = subprocess.run([sys.executable, __file__, *map(str, args)], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{' '.join(map(str, args[:2]))} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _spread(row: dict[str, object], per_round: list[dict], keys: list[str]) -> None:
    """The median over rounds of each key into ``row``, with its min and max."""
    for key in keys:
        values = [r[key] for r in per_round]
        row[key] = statistics.median(values)
        row[f"{key}_min"], row[f"{key}_max"] = min(values), max(values)


def measure_rounds(
    name: str,
    rounds: int,
    repeats: int,
    warmup: int,
    threshold: float,
    optim: str = OPTIM,
    variants: tuple[str, ...] = VARIANTS,
    seq: int = SEQ,
) -> dict[str, object]:
    """``measure_time`` in ``rounds`` fresh processes: the median ratio, its spread, every round."""
    per_round = [_child("--time-child", name, repeats, warmup, threshold, optim, ",".join(variants), seq)
                 for _ in range(rounds)]  # fmt: skip
    ratios = [k for k in per_round[0] if k.endswith("time_ratio")]
    row: dict[str, object] = {}
    _spread(row, per_round, [*ratios, *(k for k in per_round[0] if k.endswith("_step_s"))])
    for key in ratios:
        row[f"{key}_rounds"] = [r[key] for r in per_round]
    row.update({k: per_round[0][k] for k in ("flop_limit", "matmul_gflop", "repeats", "seq", "batch_shape",
                                             "selections")})  # fmt: skip
    row["kernels"] = sorted({k for r in per_round for k in r["kernels"]})
    row["rounds"] = rounds
    row["optim"] = optim
    return row


def fisher_rounds(task: str, examples: int, batch_size: int, rounds: int, repeats: int, warmup: int,
                  threshold: float, optim: str = OPTIM, seq: int = SEQ) -> dict[str, object]:  # fmt: skip
    """``measure_fisher`` in ``rounds`` fresh processes: medians over rounds with their spread."""
    per_round = [_child("--fisher-child", task, examples, batch_size, repeats, warmup, threshold, optim, seq)
                 for _ in range(rounds)]  # fmt: skip
    keys = ("task", "examples", "fisher_batch_size", "plain_batch", "task_steps", "seq", "repeats")
    row: dict[str, object] = {k: per_round[0][k] for k in keys}
    _spread(row, per_round, ["fisher_s", "fisher_s_per_example", "plain_step_s", "plain_steps_per_estimate",
                             "task_share"])  # fmt: skip
    row.update(rounds=rounds, optim=optim, config=str(PAPER_CONFIG.relative_to(PAPER_CONFIG.parents[2])))
    return row


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


def _load_library_code(bf16: bool) -> None:
    """A few MIGU steps on a tiny layer, in every variant alike: the first call of an operator
    maps its code pages into resident memory (about 2 MB for MIGU's), a one-time cost of the
    process, not memory that grows with the model; it is paid before the measurement starts."""
    for fast in (True, False):
        layer = nn.Linear(64, 64)
        opt = torch.optim.AdamW(layer.parameters())
        migu.attach(layer, threshold=0.5, optimizer=opt, micro_batches_per_step=1, fast_path=fast)
        for _ in range(2):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = layer(torch.randn(8, 64)).float().pow(2).mean()
            loss.backward()
            opt.step()


def memory_child(name: str, variant: str, threshold: float, optim: str = OPTIM, seq: int = SEQ) -> None:
    """Run in a subprocess: print the peak memory growth of 3 training steps (kB)."""
    _load_library_code(name.endswith("_bf16"))
    torch.manual_seed(0)
    model, make_batch, loss_fn = CASES[name](seq=seq)
    model, opt, _ = _prepare(variant, model, threshold, optim)
    batch = make_batch()
    before = _rss_kb("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current size
        f.write("5")
    for _ in range(3):
        _step(model, opt, batch, name.endswith("_bf16"), loss_fn)
    print(json.dumps({"peak_growth_kb": _rss_kb("VmHWM:") - before}))


def measure_memory(name: str, threshold: float, optim: str = OPTIM, seq: int = SEQ) -> dict[str, object]:
    growth = {}
    # glibc's adaptive mmap threshold keeps freed blocks resident at random, which makes RSS peaks
    # vary by about 5% from run to run; a fixed threshold makes them repeatable to the kilobyte
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    for variant in VARIANTS:
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", name, variant, str(threshold), optim, str(seq)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        growth[variant] = json.loads(out.stdout.strip().splitlines()[-1])["peak_growth_kb"]
    return {
        "memory_ratio": growth["migu"] / growth["plain"],
        "dense_memory_ratio": growth["migu_dense"] / growth["plain"],
        **{f"{v}_peak_growth_mb": growth[v] / 1024 for v in VARIANTS},
        "memory_optim": optim,
    }


def main(argv: list[str] | None = None) -> None:
    args_ = sys.argv[1:] if argv is None else argv
    child = args_[0] if args_ else ""
    if child == "--memory-child":
        name, variant, threshold, optim, seq = args_[1:6]
        memory_child(name, variant, float(threshold), optim, int(seq))
        return
    if child == "--time-child":
        name, repeats, warmup, threshold, optim, variants, seq = args_[1:8]
        print(json.dumps(measure_time(name, int(repeats), int(warmup), float(threshold), optim,
                                      tuple(variants.split(",")), int(seq))))  # fmt: skip
        return
    if child == "--fisher-child":
        task, examples, size, repeats, warmup, threshold, optim, seq = args_[1:9]
        print(json.dumps(measure_fisher(task, int(examples), int(size), int(repeats), int(warmup), float(threshold),
                                        optim, int(seq))))  # fmt: skip
        return
    if child == "--table":
        print(table(args_[1]))
        return
    fisher = FisherConfig()
    named = groups()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=DEFAULT, help=f"comma list of {', '.join([*named, *CASES])}")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="independent rounds (fresh processes) per case")
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--optim", default=OPTIM, choices=OPTIMIZERS, help="AdamW implementation (train.optim)")
    parser.add_argument("--seq", type=int, default=SEQ, help="tokens per sequence (the tests' tiny runs)")
    parser.add_argument("--scores", action="store_true", help="also time the random, gradient and given scores")
    parser.add_argument("--fisher", action="store_true", help="also time the Fisher estimate of a task")
    parser.add_argument("--fisher-task", default="amazon", help="the MiniLM task of --fisher")
    parser.add_argument("--fisher-examples", type=int, default=fisher.fisher_examples)
    parser.add_argument("--fisher-batch-size", type=int, default=fisher.fisher_batch_size)
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--no-time", action="store_true", help="measure memory only (time kept from --out)")
    parser.add_argument("--out", help="write the results as JSON here (updated after every case)")
    args = parser.parse_args(argv)
    args.command = " ".join(sys.argv if argv is None else ["benchmarks/speed.py", *argv])
    names = [n for part in args.cases.split(",") if part for n in named.get(part, [part])]
    for name in names:
        if name not in CASES:
            parser.error(f"unknown case {name!r}; choose from {', '.join([*named, *CASES])}")
    results: dict[str, object] = {}
    if args.out and Path(args.out).exists():
        results = json.loads(Path(args.out).read_text())
    variants = (*VARIANTS, *SCORE_VARIANTS) if args.scores else VARIANTS
    for name in names:
        load = os.getloadavg()
        if args.no_time:
            row = dict(results.get(name, {}))  # type: ignore[call-overload]
        else:
            # keep the memory columns of an earlier run (with their own memory_date)
            timed = measure_rounds(name, args.rounds, args.repeats, args.warmup, args.threshold, args.optim,
                                   variants, args.seq)  # fmt: skip
            row = {**results.get(name, {}), **timed}  # type: ignore[dict-item]
        if not args.no_memory:
            row.update(measure_memory(name, args.threshold, args.optim, args.seq))
        row["memory_date" if args.no_time else "date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        results[name] = _provenance(row, load, args.command)
        print(name, json.dumps(row), flush=True)
        _save(results, args)
    if args.fisher:
        load = os.getloadavg()
        results["_fisher"] = fisher_rounds(args.fisher_task, args.fisher_examples, args.fisher_batch_size,
                                           args.rounds, args.repeats, args.warmup, args.threshold, args.optim,
                                           args.seq)  # fmt: skip
        _provenance(results["_fisher"], load, args.command)  # type: ignore[arg-type]
        print("_fisher", json.dumps(results["_fisher"]), flush=True)
        _save(results, args)


def _provenance(row: dict[str, object], load: tuple[float, ...], command: str) -> dict[str, object]:
    """The command, the commit and the load average (1, 5, 15 min) before and after a row: on a
    shared machine the load says how far its numbers can be trusted."""
    row.update(command=command, commit=source_revision(), load_average=[list(load), list(os.getloadavg())])
    return row


def _save(results: dict[str, object], args: argparse.Namespace) -> None:
    results["_meta"] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "threshold": args.threshold,
        "command": args.command,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
