"""Step time and peak memory of MIGU vs plain finetuning.

    python benchmarks/speed.py --out benchmarks/results/speed/speed.json [--cases a,b] [--repeats 10]
    python benchmarks/speed.py --table benchmarks/results/speed/speed.json    # markdown table

Time: one process per case; a plain model and identical copies with MIGU attached through their
optimizers take interleaved training steps (forward, backward, AdamW step as ``train.optim`` or
``--optim`` makes it), median of
``--repeats`` steps each after warm-up. ``migu`` is the default (fast path: the loop declares one
micro-batch per optimizer step); ``migu_dense`` forces the reference path (dense weight
gradients, then masking). Memory: each variant runs alone in a fresh subprocess (glibc mmap threshold
fixed, so that freed memory leaves the process); its peak resident memory during 3 steps minus
the resident memory before the first step (after loading the code of MIGU's operators, the same
in every variant).
Output: ``{case: {"time_ratio", "memory_ratio", "dense_time_ratio", "dense_memory_ratio", ...}}``.
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
from collections.abc import Callable
from datetime import datetime, timezone

import torch
from torch import nn

import migu
from migu.bench.provenance import cpu_name
from migu.train import TrainConfig, make_optimizer
from migu.train.config import OPTIMIZERS

OPTIM = TrainConfig().optim


Batch = Callable[[], dict]
Loss = Callable[[nn.Module, dict], torch.Tensor]
Case = tuple[nn.Module, Batch, Loss | None]
VARIANTS = ("plain", "migu", "migu_dense")


class Block(nn.Module):
    """The linear layers of a transformer block: q, k, v, o and a 2-layer FFN."""

    def __init__(self, d: int, ffn: int) -> None:
        super().__init__()
        self.attention = nn.ModuleDict({n: nn.Linear(d, d) for n in ("q", "k", "v", "o")})
        self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Linear(ffn, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attention
        x = x + a["o"](a["q"](x) + a["k"](x) + a["v"](x))
        return x + self.ffn(x)


class BlockStack(nn.Module):
    def __init__(self, d: int, ffn: int, depth: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(d, ffn) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def block_case(d: int, tokens: int = 16 * 128, depth: int = 2) -> Case:
    model = BlockStack(d, 4 * d, depth)
    x = torch.randn(tokens // 128, 128, d) if tokens >= 128 else torch.randn(1, tokens, d)
    return model, lambda: {"x": x}, None


def minilm_case(batch: int = 16, seq: int = 128) -> Case:
    from migu.models import load_model

    model = load_model("minilm").model
    ids = torch.randint(1000, 20000, (batch, seq))
    return model, lambda: {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, None


def minilm_cl_case(task: str = "amazon", batch: int = 64, batches: int = 8) -> Case:
    """The CL benchmark's training step: the packaged MiniLM scoring 64 real examples of a task of
    the shared data against their candidate labels (configs/cpu/minilm_standard.yaml), a new batch
    each step."""
    from itertools import cycle

    from migu.bench.config import DataConfig
    from migu.data.cl_benchmark import load_task
    from migu.formats import make_format
    from migu.models import load_model

    bundle = load_model("minilm")
    fmt = make_format(bundle.arch, bundle.tokenizer, 128)
    root = os.environ.get("MIGU_CL_BENCHMARK", DataConfig.root)  # the tests' variable and the configs' default
    train = load_task(root, task, n_train=batch * batches, n_test=1).train
    queue = cycle([fmt.batch(train[i : i + batch]) for i in range(0, len(train), batch)])
    return bundle.model, lambda: next(queue), fmt.loss


def minilm_cpt_case(batch: int = 32, batches: int = 4) -> Case:
    """The continual pre-training step (configs/cpu/cpt_minilm.yaml): the packaged MiniLM with its
    MLM head learning 32 real yelp passages of the das_cpu source by masked LM, up to 128 tokens,
    a new batch each step."""
    from itertools import cycle

    from migu.bench.config import DataConfig
    from migu.data import load_source
    from migu.formats import make_format
    from migu.models import load_model

    root = os.environ.get("MIGU_CL_BENCHMARK", DataConfig.root)
    data = DataConfig(source="das_cpu", root=root, order=["yelp"], n_train=batch * batches, n_test=8)
    texts = load_source(data, seed=0).tasks[0].train
    bundle = load_model("minilm", kind="corpus")
    fmt = make_format(bundle.arch, bundle.tokenizer, 128, kind="corpus")
    queue = cycle([fmt.batch(texts[i : i + batch]) for i in range(0, len(texts), batch)])
    return bundle.model, lambda: next(queue), fmt.loss


def smollm2_lora_case(batch: int = 8, seq: int = 128) -> Case:
    from peft import LoraConfig, get_peft_model

    from migu.models import load_model

    base = load_model("smollm2").model
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    ids = torch.randint(100, 40000, (batch, seq))
    return model, lambda: {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, None


def smollm2_lora_cl_case(task: str = "dbpedia", batch: int = 16, batches: int = 4) -> Case:
    """The decoder CL benchmark's training step (configs/cpu/smollm2_lora_order1.yaml): the packaged
    SmolLM2 with LoRA (r 8, alpha 32, q and v) learning 16 real examples of order 1's first task,
    prompt + answer up to 160 tokens, loss on the answer tokens (the options format's loss), a new
    batch each step."""
    from itertools import cycle

    from peft import LoraConfig, get_peft_model

    from migu.bench.config import DataConfig
    from migu.data.cl_benchmark import load_task
    from migu.formats import make_format
    from migu.models import load_model

    bundle = load_model("smollm2")
    fmt = make_format(bundle.arch, bundle.tokenizer, 160)
    root = os.environ.get("MIGU_CL_BENCHMARK", DataConfig.root)
    train = load_task(root, task, n_train=batch * batches, n_test=1).train
    queue = cycle([fmt.batch(train[i : i + batch]) for i in range(0, len(train), batch)])
    config = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    return get_peft_model(bundle.model, config), lambda: next(queue), fmt.loss


def smollm2_lora_instruct_case(batch: int = 8, batches: int = 4) -> Case:
    """The instruction-tuning step (configs/cpu/instruct_smollm2.yaml): the packaged SmolLM2 with
    LoRA learning 8 packaged MBPP problems with their solutions (chat template, up to 320 tokens,
    loss on the response tokens), a new batch each step."""
    from itertools import cycle

    from peft import LoraConfig, get_peft_model

    from migu.bench.config import DataConfig
    from migu.data import load_source
    from migu.formats import make_format
    from migu.models import load_model

    data = DataConfig(source="skills", kind="instruction", order=["code_mbpp"], n_train=batch * batches, n_test=1)
    train = load_source(data, seed=0).tasks[0].train
    bundle = load_model("smollm2", kind="instruction")
    fmt = make_format(bundle.arch, bundle.tokenizer, 320, kind="instruction")
    queue = cycle([fmt.batch(train[i : i + batch]) for i in range(0, len(train), batch)])
    config = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    return get_peft_model(bundle.model, config), lambda: next(queue), fmt.loss


CASES: dict[str, Callable[[], Case]] = {
    "block_d1024": lambda: block_case(1024),
    "minilm_full": minilm_case,
    "smollm2_lora": smollm2_lora_case,
    **{f"block_d512_tokens{t}": (lambda t=t: block_case(512, tokens=t)) for t in (512, 2048, 8192)},
    **{f"block_width{d}_tokens1024": (lambda d=d: block_case(d, tokens=1024, depth=1)) for d in (256, 1024, 4096)},
    # the same steps under bf16 autocast (fp32 weights, bf16 matmuls), as the CPU-scale CL configs run
    "block_d1024_bf16": lambda: block_case(1024),
    "minilm_full_bf16": minilm_case,
    # the step of the CPU-scale CL benchmark (batch 64 of real text, label scoring), fp32 and bf16
    "minilm_cl_b64": minilm_cl_case,
    # the continual pre-training step (MLM on real passages), as configs/cpu/cpt_minilm.yaml trains
    "minilm_cpt": minilm_cpt_case,
    "minilm_cl_b64_bf16": minilm_cl_case,
    # the decoder CL benchmark's step: SmolLM2 LoRA on real prompts, loss on the answer tokens
    "smollm2_lora_cl_b16": smollm2_lora_cl_case,
    # the instruction-tuning step: SmolLM2 LoRA on MBPP problems, loss on the response tokens
    "smollm2_lora_instruct_b8": smollm2_lora_instruct_case,
}
DEFAULT = "block_d1024,minilm_full,smollm2_lora,block_d512_tokens512,block_d512_tokens2048,block_d512_tokens8192,"
DEFAULT += "block_width256_tokens1024,block_width1024_tokens1024,block_width4096_tokens1024,"
DEFAULT += "block_d1024_bf16,minilm_full_bf16"


def _loss(output: object) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        hidden = output
    else:
        hidden = getattr(output, "last_hidden_state", None)
        hidden = hidden if hidden is not None else output.logits  # type: ignore[attr-defined]
    return hidden.float().pow(2).mean()


def _prepare(
    variant: str, model: nn.Module, threshold: float, optim: str = OPTIM
) -> tuple[nn.Module, torch.optim.Optimizer, migu.MiguHandle | None]:
    """The variant's model and optimizer, as migu's training loop makes it (``train.optim``)."""
    model.train()
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], TrainConfig(lr=1e-5, optim=optim))
    handle = None
    if variant != "plain":
        handle = migu.attach(
            model, threshold=threshold, optimizer=opt, micro_batches_per_step=1, fast_path=variant == "migu"
        )
    return model, opt, handle


def _step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    batch: dict,
    bf16: bool = False,
    loss_fn: Loss | None = None,
    device_type: str = "cpu",
) -> None:
    """One training step as every speed script times it: forward (bf16 autocast or not), backward,
    optimizer step, gradients freed."""
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        loss = loss_fn(model, batch) if loss_fn else _loss(model(**batch))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


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
        (loss_fn(model, batch) if loss_fn else _loss(model(**batch))).backward()
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


def measure_time(name: str, repeats: int, warmup: int, threshold: float, optim: str = OPTIM) -> dict[str, float]:
    torch.manual_seed(0)
    model, make_batch, loss_fn = CASES[name]()
    limit = flop_limit(copy.deepcopy(model), make_batch(), loss_fn, threshold)
    runs = {v: (*_prepare(v, copy.deepcopy(model), threshold, optim), []) for v in VARIANTS}
    del model
    for i in range(warmup + repeats):
        batch = make_batch()  # the same batch for every variant within a repetition
        for m, opt, _, times in runs.values():
            start = time.perf_counter()
            _step(m, opt, batch, name.endswith("_bf16"), loss_fn)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    med = {v: statistics.median(t) for v, (_, _, _, t) in runs.items()}
    handle = runs["migu"][2]
    kernels = sorted(set(handle.fast_path_kernels().values())) if handle is not None else []
    return {
        "time_ratio": med["migu"] / med["plain"],
        "dense_time_ratio": med["migu_dense"] / med["plain"],
        **{f"{v}_step_s": med[v] for v in VARIANTS},
        "repeats": repeats,
        **limit,
        "kernels": kernels,
    }


def measure_rounds(
    name: str, rounds: int, repeats: int, warmup: int, threshold: float, optim: str = OPTIM
) -> dict[str, object]:
    """``measure_time`` in ``rounds`` fresh processes: the median ratio, its spread, every round."""
    per_round = []
    for _ in range(rounds):
        out = subprocess.run(
            [sys.executable, __file__, "--time-child", name, str(repeats), str(warmup), str(threshold), optim],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        per_round.append(json.loads(out.stdout.strip().splitlines()[-1]))
    row: dict[str, object] = {}
    for key in ("time_ratio", "dense_time_ratio", *(f"{v}_step_s" for v in VARIANTS)):
        values = [r[key] for r in per_round]
        row[key] = statistics.median(values)
        row[f"{key}_min"], row[f"{key}_max"] = min(values), max(values)
    row["time_ratio_rounds"] = [r["time_ratio"] for r in per_round]
    row["dense_time_ratio_rounds"] = [r["dense_time_ratio"] for r in per_round]
    row.update({k: per_round[0][k] for k in ("flop_limit", "matmul_gflop", "repeats")})
    row["kernels"] = sorted({k for r in per_round for k in r["kernels"]})
    row["rounds"] = rounds
    row["optim"] = optim
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


def memory_child(name: str, variant: str, threshold: float, optim: str = OPTIM) -> None:
    """Run in a subprocess: print the peak memory growth of 3 training steps (kB)."""
    _load_library_code(name.endswith("_bf16"))
    torch.manual_seed(0)
    model, make_batch, loss_fn = CASES[name]()
    model, opt, _ = _prepare(variant, model, threshold, optim)
    batch = make_batch()
    before = _rss_kb("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current size
        f.write("5")
    for _ in range(3):
        _step(model, opt, batch, name.endswith("_bf16"), loss_fn)
    print(json.dumps({"peak_growth_kb": _rss_kb("VmHWM:") - before}))


def measure_memory(name: str, threshold: float, optim: str = OPTIM) -> dict[str, float]:
    growth = {}
    # glibc's adaptive mmap threshold keeps freed blocks resident at random, which makes RSS peaks
    # vary by about 5% from run to run; a fixed threshold makes them repeatable to the kilobyte
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    for variant in VARIANTS:
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", name, variant, str(threshold), optim],
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


# the speed issue's targets: (fast path / plain, dense path / plain); peak memory <= 1.02 everywhere
TARGETS = {
    "block_d1024": (0.85, 1.03),
    "minilm_full": (0.92, 1.03),
    "smollm2_lora": (1.00, 1.03),
    "block_d1024_bf16": (1.00, 1.03),
    "minilm_full_bf16": (1.00, 1.03),
}


def _cell(row: dict, key: str, target: float | None) -> str:
    value = row.get(key)
    if value is None:
        return ""
    text = f"{value:.3f}"
    if f"{key}_min" in row:
        text += f" [{row[f'{key}_min']:.3f}-{row[f'{key}_max']:.3f}]"
    return text + ("" if target is None else (" ✓" if value <= target else " ✗"))


def _optimizers(row: dict) -> str:
    """The optimizer of the timings and, if another, of the memory rows (``--no-time`` keeps the
    timings of an earlier run); rows written before ``train.optim`` used torch's loop."""
    timed = row.get("optim", "adamw_torch")
    memory = row.get("memory_optim", timed)
    return timed if memory == timed else f"time: {timed}, memory: {memory}"


def table(path: str) -> str:
    """The markdown table of a results file, with the issue's targets: medians over rounds with
    their [min-max], the FLOP limit of the fast path."""
    with open(path) as f:
        results = json.load(f)
    meta = results.get("_meta", {})
    lines = [
        f"{meta.get('cpu', meta.get('machine', '?'))}, {meta.get('date', '?')}, torch {meta.get('torch', '?')}",
        "",
        "| case | plain step (s) | MIGU / plain time [min-max] | target | FLOP limit | dense MIGU / plain [min-max] "
        "| target | MIGU / plain peak memory | dense / plain peak memory | rounds | optimizer |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if name.startswith("_"):
            continue
        fast_target, dense_target = TARGETS.get(name, (None, None))
        limit = r.get("flop_limit")
        lines.append(
            f"| `{name}` | {r['plain_step_s']:.3f} | {_cell(r, 'time_ratio', fast_target)} | {fast_target or ''} | "
            f"{'' if limit is None else f'{limit:.3f}'} | {_cell(r, 'dense_time_ratio', dense_target)} | "
            f"{dense_target or ''} | {_cell(r, 'memory_ratio', 1.02)} | {_cell(r, 'dense_memory_ratio', 1.02)} | "
            f"{r.get('rounds', 1)} | {_optimizers(r)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--memory-child":
        memory_child(sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5])
        return
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--time-child":
        name, repeats, warmup, threshold, optim = sys.argv[2:7]
        print(json.dumps(measure_time(name, int(repeats), int(warmup), float(threshold), optim)))
        return
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--table":
        print(table(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=DEFAULT, help=f"comma list of {', '.join(CASES)}")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="independent rounds (fresh processes) per case")
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--optim", default=OPTIM, choices=OPTIMIZERS, help="AdamW implementation (train.optim)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--no-time", action="store_true", help="measure memory only (time kept from --out)")
    parser.add_argument("--out", help="write the results as JSON here (updated after every case)")
    args = parser.parse_args(argv)
    results: dict[str, object] = {}
    if args.out:
        try:
            with open(args.out) as f:
                results = json.load(f)
        except FileNotFoundError:
            pass
    for name in args.cases.split(","):
        if name not in CASES:
            parser.error(f"unknown case {name!r}; choose from {', '.join(CASES)}")
        if args.no_time:
            row = dict(results.get(name, {}))  # type: ignore[call-overload]
        else:
            # keep the memory columns of an earlier run (with their own memory_date)
            timed = measure_rounds(name, args.rounds, args.repeats, args.warmup, args.threshold, args.optim)
            row = {**results.get(name, {}), **timed}  # type: ignore[dict-item]
        if not args.no_memory:
            row.update(measure_memory(name, args.threshold, args.optim))
        row["memory_date" if args.no_time else "date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        results[name] = row
        print(name, json.dumps(row), flush=True)
        results["_meta"] = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
            "cpu": cpu_name(),
            "torch": torch.__version__,
            "threshold": args.threshold,
            "command": " ".join(sys.argv),
        }
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
