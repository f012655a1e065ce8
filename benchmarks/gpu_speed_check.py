"""Time MIGU against plain finetuning on your GPU: plain, MIGU's fast path and MIGU's dense
(reference) path, bf16 autocast, for the d=1024 block stack of ``speed.py`` and a ~125M Llama
built from a config (random weights, no download).

    python benchmarks/gpu_speed_check.py                 # one GPU, about 1-3 minutes
    python benchmarks/gpu_speed_check.py --decoder 1b    # a ~1.1B Llama instead (24+ GB of memory)

The model is built once on the CPU; each variant is a copy of it moved to the GPU alone, with
its own AdamW (fp32 weights, gradients and Adam state: ~18 GB for the 1.1B model, plus
activations), timed over the same batches (forward, backward, optimizer step; synchronized),
median of ``--steps`` after ``--warmup``, then freed; the three variants are repeated
``--rounds`` times and the median ratio is printed with its min-max. Also printed: the fast
path's kernels (``fast_path_kernel="auto"`` keeps ``gather`` on a GPU: it times kernels only
on CPUs) and each variant's peak memory.
It prints a markdown table; paste it into an issue with ``nvidia-smi -L``'s line.

Without a GPU (``--device cpu --tiny``) it runs the same code on tiny sizes: what the test
suite checks. It has not been run on a GPU by the project yet (no GPU in its sessions).
``benchmarks/gpu_check.sh`` runs its ``time_variant`` at batch 8 and 64 on models of real shapes,
with the reference and update-mode checks, into one JSON file: the first command for a GPU.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import migu
from migu.train import TrainConfig, make_optimizer

sys.path.insert(0, str(Path(__file__).parent))
from speed import BlockStack, _step

VARIANTS = ("plain", "migu", "migu_dense")
DECODERS = {  # hidden, intermediate, layers, heads, kv heads
    "125m": (768, 2048, 12, 12, 4),
    "1b": (2048, 5632, 22, 32, 4),
    "tiny": (64, 128, 2, 4, 2),
}


def block_case(device: torch.device, tiny: bool) -> tuple[nn.Module, Callable[[], dict], Callable]:
    d, tokens = (64, 256) if tiny else (1024, 16 * 128)
    model = BlockStack(d, 4 * d, 2)  # on the CPU: each variant takes its own copy to the device
    x = torch.randn(tokens // 128 or 1, min(tokens, 128), d, device=device)
    return model, lambda: {"x": x}, lambda m, b: m(**b).float().pow(2).mean()


def decoder_case(
    device: torch.device, size: str, batch: int, seq: int
) -> tuple[nn.Module, Callable[[], dict], Callable]:
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, inter, layers, heads, kv = DECODERS[size]
    config = LlamaConfig(vocab_size=32000 if size != "tiny" else 256, hidden_size=hidden, intermediate_size=inter,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                         max_position_embeddings=max(seq, 128))  # fmt: skip
    model = LlamaForCausalLM(config)  # on the CPU: each variant takes its own copy to the device
    ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)
    return model, lambda: {"input_ids": ids, "labels": ids}, lambda m, b: m(**b).loss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_variant(case, variant: str, device: torch.device, steps: int, warmup: int, threshold: float) -> dict:
    """One variant alone on the device: median step seconds, peak memory, the kernels chosen."""
    model, make_batch, loss_fn = case
    m = copy.deepcopy(model).to(device).train()
    opt = make_optimizer(list(m.parameters()), TrainConfig(lr=1e-5))  # as migu's loop makes it by default
    handle = None
    if variant != "plain":
        handle = migu.attach(m, threshold=threshold, optimizer=opt, micro_batches_per_step=1,
                             fast_path=variant == "migu")  # fmt: skip
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        batch = make_batch()
        _sync(device)
        start = time.perf_counter()
        _step(m, opt, batch, bf16=True, loss_fn=loss_fn, device_type=device.type)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    out = {
        "step_s": statistics.median(times),
        "peak_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "kernels": sorted(set(handle.fast_path_kernels().values())) if handle else [],
    }
    del m, opt, handle
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def one_round(case, device: torch.device, steps: int, warmup: int, threshold: float) -> dict[str, object]:
    runs = {v: time_variant(case, v, device, steps, warmup, threshold) for v in VARIANTS}
    step = {v: r["step_s"] for v, r in runs.items()}
    return {
        "step_s": step,
        "time_ratio": step["migu"] / step["plain"],
        "dense_time_ratio": step["migu_dense"] / step["plain"],
        "kernels": runs["migu"]["kernels"],
        "peak_gb": {v: r["peak_gb"] for v, r in runs.items() if r["peak_gb"] is not None},
    }


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--decoder", default="125m", choices=[k for k in DECODERS if k != "tiny"])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (to check the script without a GPU)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threshold", type=float, default=0.7)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; use --device cpu --tiny to check the script")
    size = "tiny" if args.tiny else args.decoder
    cases = {
        "block_d1024" if not args.tiny else "block_tiny": lambda: block_case(device, args.tiny),
        f"llama_{size}": lambda: decoder_case(device, size, 2 if args.tiny else 8, 32 if args.tiny else 512),
    }
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device} (check run)"
    lines = [f"{name}, torch {torch.__version__}, bf16 autocast, T = {args.threshold}", "",
             "| case | plain step (ms) | MIGU / plain [min-max] | dense / plain [min-max] | kernels "
             "| peak GB plain / MIGU |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for case_name, build in cases.items():
        torch.manual_seed(0)
        case = build()
        rounds = [one_round(case, device, args.steps, args.warmup, args.threshold) for _ in range(args.rounds)]
        fast = [float(r["time_ratio"]) for r in rounds]  # type: ignore[arg-type]
        dense = [float(r["dense_time_ratio"]) for r in rounds]  # type: ignore[arg-type]
        plain_ms = 1000 * statistics.median(r["step_s"]["plain"] for r in rounds)  # type: ignore[index]
        kernels = sorted({k for r in rounds for k in r["kernels"]})  # type: ignore[attr-defined]
        peak = rounds[-1]["peak_gb"]
        memory = f"{peak['plain']:.2f} / {peak['migu']:.2f}" if peak else "n/a"  # type: ignore[index]
        lines.append(
            f"| {case_name} | {plain_ms:.1f} | {statistics.median(fast):.3f} [{min(fast):.3f}-{max(fast):.3f}] | "
            f"{statistics.median(dense):.3f} [{min(dense):.3f}-{max(dense):.3f}] | {', '.join(kernels)} | {memory} |"
        )
        print(lines[-1], flush=True)
        del case
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
