"""One rank of the two-process FSDP2 tests (run by torchrun from test_fsdp.py).

Every scenario trains the tiny BERT for a few steps on the same global batches (each rank takes
its rows of every batch) and records, per step, the kept rows, whether masked rows of this rank's
shard got a zero gradient (grad mode) or stayed bit-identical (update mode), and at the end the
full parameters. A DDP run on the same data is the cross-check of the sharded runs.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

import migu

from tiny import batch, build

STEPS = 3
GLOBAL = 4  # examples per optimizer step, over both ranks


def step_batches(step: int, micro_batches: int, rank: int, world: int) -> list[dict[str, torch.Tensor]]:
    """This rank's part of each micro-batch of a step: micro-batch m holds global rows
    [m * GLOBAL / micro_batches, ...), split evenly over the ranks."""
    full = batch("bert", seed=100 + step, size=GLOBAL)
    per_micro = GLOBAL // micro_batches
    out = []
    for m in range(micro_batches):
        rows = torch.arange(m * per_micro, (m + 1) * per_micro).chunk(world)[rank]
        out.append({k: v[rows] for k, v in full.items()})
    return out


def shard_rows(param: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Global indices of the rows of ``param`` this rank holds under Shard(0) (torch.chunk's split)."""
    rows = torch.arange(param.shape[0]).chunk(world)
    return rows[rank] if rank < len(rows) else torch.arange(0)


def run(kind: str, mode: str, micro_batches: int, rank: int, world: int, **config) -> dict:
    model = build("bert", seed=0)
    mixed = config.pop("mixed", False)
    # MIGU attached before fully_shard: it reads each weight from its module when it needs it
    early = migu.attach(model, threshold=0.7, mask_mode=mode, **config) if config.pop("attach_first", False) else None
    if kind == "fsdp":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed else None
        kwargs = {"mp_policy": policy} if policy else {}
        for layer in model.bert.encoder.layer:
            fully_shard(layer, **kwargs)
        fully_shard(model, **kwargs)
        wrapped = model
    else:
        wrapped = DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)
    if early is not None:
        handle = early
        handle.attach_optimizer(opt)
        handle.set_micro_batches_per_step(micro_batches)
    else:
        handle = migu.attach(
            model, threshold=0.7, optimizer=opt, mask_mode=mode, micro_batches_per_step=micro_batches, **config
        )
    record: dict = {"kept": [], "zero_grad": [], "unchanged": [], "fast": handle.fast_path_layers}
    targets = {t.name: t for s in handle.sources for t in s.targets}
    for step in range(STEPS):
        parts = step_batches(step, micro_batches, rank, world)
        for m, b in enumerate(parts):
            if kind == "ddp" and m < len(parts) - 1:
                with wrapped.no_sync():
                    wrapped(**b).loss.backward()
            else:
                wrapped(**b).loss.backward()
        handle.before_optimizer_step()  # (idempotent: the optimizer hook finds it done)
        kept = {n: r.kept_rows for n, r in handle.report().items()}
        record["kept"].append(kept)
        before, zero = {}, {}
        for name, t in targets.items():
            w, g = t.weight.detach(), t.weight.grad
            sharded = isinstance(w, DTensor)
            local_w = w.to_local() if sharded else w
            rows = shard_rows(w, rank, world) if sharded else torch.arange(w.shape[0])
            assert local_w.shape[0] == rows.numel(), (name, local_w.shape, rows.numel())
            masked = ~torch.isin(rows, kept[name])
            before[name] = (local_w.clone(), masked)
            if mode == "grad":
                local_g = g.to_local() if isinstance(g, DTensor) else g
                zero[name] = (bool((local_g[masked] == 0).all()), bool((local_g[~masked] != 0).any()))
        record["zero_grad"].append(zero)
        opt.step()
        opt.zero_grad()
        unchanged = {}
        for name, t in targets.items():
            w = t.weight.detach()
            local_w = w.to_local() if isinstance(w, DTensor) else w
            start, masked = before[name]
            unchanged[name] = (bool(torch.equal(local_w[masked], start[masked])), not torch.equal(local_w, start))
        record["unchanged"].append(unchanged)
    record["masks"] = handle.kept_masks()
    params = {}
    for name, p in model.named_parameters():
        p = p.detach()
        params[name] = (p.full_tensor() if isinstance(p, DTensor) else p).float().clone()
    record["params"] = params
    handle.remove()
    return record


SCENARIOS = {
    # name: (kind, mask mode, micro-batches per step, extra MIGU settings)
    "fsdp_grad_accum": ("fsdp", "grad", 2, {}),
    "ddp_grad_accum": ("ddp", "grad", 2, {}),
    "fsdp_update": ("fsdp", "update", 1, {"fast_path": False}),
    "fsdp_grad": ("fsdp", "grad", 1, {"fast_path": False}),
    "fsdp_grad_fast": ("fsdp", "grad", 1, {}),
    "fsdp_grad_in_backward": ("fsdp", "grad", 1, {"mask_timing": "in_backward"}),
    "fsdp_update_bf16_fast": ("fsdp", "update", 1, {"mixed": True}),
    "fsdp_grad_bf16": ("fsdp", "grad", 1, {"mixed": True, "fast_path": False}),
    "fsdp_grad_attached_first": ("fsdp", "grad", 1, {"attach_first": True}),
    "ddp_grad_in_backward": ("ddp", "grad", 1, {"mask_timing": "in_backward"}),
}


def main(out_dir: str, names: list[str]) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {}
    for name in names:
        kind, mode, micro, config = SCENARIOS[name]
        results[name] = run(kind, mode, micro, rank, world, **config)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","))
