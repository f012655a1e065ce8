"""Training-step time of the packaged MiniLM in fp32 vs bf16 autocast, on this machine's CPU.

    python benchmarks/precision.py [--batch 64] [--length 128] [--steps 3] [--out FILE.json]

Why: the benchmark configs train under bf16 autocast, as the paper's GPU runs do. A CPU without
native bf16 (no AVX512-BF16 or AMX) emulates it; this measures what that costs. One process,
the two precisions alternate step by step (so a load from elsewhere hits both alike); each
number is the median of ``--steps`` full steps (forward, backward, AdamW step) after one warm-up
step each. Prints JSON: the CPU, whether oneDNN reports native bf16, seconds per step, the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

from migu.bench.provenance import cpu_name
from migu.models.loading import minilm_path
from migu.train.loop import cpu_has_native_bf16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(1000, 30000, (args.batch, args.length))
    labels = torch.randint(0, 5, (args.batch,))
    seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for step in range(args.steps + 1):
        for precision, times in seconds.items():
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if step:  # the first step of each precision warms up
                times.append(time.perf_counter() - start)
            print(f"step {step} {precision}: {time.perf_counter() - start:.2f} s", flush=True)
    fp32, bf16 = (statistics.median(seconds[p]) for p in ("fp32", "bf16"))
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "native_bf16": cpu_has_native_bf16(),
        "batch": args.batch,
        "length": args.length,
        "seconds_per_step": {"fp32": round(fp32, 3), "bf16_autocast": round(bf16, 3)},
        "bf16_over_fp32": round(bf16 / fp32, 2),
        "steps": args.steps,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
