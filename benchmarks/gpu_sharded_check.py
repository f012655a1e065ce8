"""Check MIGU under sharded training on your GPU(s): DeepSpeed ZeRO-2 (through Accelerate) and FSDP2.

    python benchmarks/gpu_sharded_check.py            # 1 process per GPU, at most 2; about 1-3 min

Without a GPU it runs on the CPU with two gloo processes (what the test suite checks). For each
engine a small Llama built from a config (no download) trains a few steps with MIGU and the
script checks, on every rank:

* ZeRO-2, ``mask_timing="in_backward"`` (bf16 on a GPU): plain SGD leaves every masked row
  exactly unchanged (its gradient was zero when ZeRO took it), every kept row moves, all ranks keep
  the same rows; the default step timing raises its clear error (ZeRO-2 keeps no ``.grad``).
* FSDP2 (``fully_shard``, ``MixedPrecisionPolicy`` bf16 on a GPU), fast path: in grad mode the
  masked rows of this rank's shard of every gradient are zero; in update mode (AdamW, weight
  decay) the masked rows of this rank's shard stay bit-identical.

Prints one line per check and exits 1 if any fails. Needs ``deepspeed`` for the ZeRO-2 part
(skipped, and said so, without it).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time

import torch
import torch.distributed as dist

STEPS = 4


def _model(device: torch.device) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1024, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256)  # fmt: skip
    return LlamaForCausalLM(config).to(device).train()


def _batch(step: int, rank: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + rank)
    ids = torch.randint(0, 1024, (4, 64), generator=g).to(device)
    return {"input_ids": ids, "labels": ids}


def _report(results: list[tuple[str, bool, str]], engine: str) -> bool:
    """Gather every rank's checks on rank 0 and print them; True if all passed."""
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, results)
    if dist.get_rank() == 0:
        for rank, checks in enumerate(gathered):
            for name, ok, detail in checks:
                print(f"{'PASS' if ok else 'FAIL'} {engine} rank {rank}: {name} {detail}", flush=True)
    return all(ok for checks in gathered for _, ok, _ in checks)


def _same_on_all_ranks(kept: dict[str, torch.Tensor]) -> bool:
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {n: r.tolist() for n, r in kept.items()})
    return all(g == gathered[0] for g in gathered)


def _masked(rows: int, kept: torch.Tensor, device: torch.device) -> torch.Tensor:
    masked = torch.ones(rows, dtype=torch.bool, device=device)
    masked[kept.to(device)] = False
    return masked


def zero2(device: torch.device) -> bool:
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

    import migu

    config = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "gradient_clipping": 0.0,
              "zero_optimization": {"stage": 2}, "bf16": {"enabled": device.type == "cuda"}}  # fmt: skip
    # on a CPU, Accelerate picks no process-group backend for DeepSpeed: name gloo
    handlers = [InitProcessGroupKwargs(backend="gloo")] if device.type == "cpu" else []
    accelerator = Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=config), kwargs_handlers=handlers)
    model = _model(accelerator.device)
    engine, opt = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=1e-2))  # plain SGD
    device = accelerator.device
    handle = migu.attach(engine.module, threshold=0.7, optimizer=opt, mask_timing="in_backward",
                         micro_batches_per_step=1)  # fmt: skip
    targets = {t.name: t for s in handle.sources for t in s.targets}
    results, rank = [], accelerator.process_index
    for step in range(STEPS):
        before = {n: t.weight.detach().clone() for n, t in targets.items()}
        accelerator.backward(engine(**_batch(step, rank, device)).loss)
        kept = {n: r.kept_rows for n, r in handle.report().items()}
        unchanged = moved = 0
        for name, t in targets.items():
            masked = _masked(t.weight.shape[0], kept[name], t.weight.device)
            w = t.weight.detach()
            unchanged += bool(torch.equal(w[masked], before[name][masked]))
            moved += bool((w[~masked] != before[name][~masked]).any())
        n = len(targets)
        results.append((f"step {step}: masked rows unchanged", unchanged == n, f"{unchanged}/{n}"))
        results.append((f"step {step}: kept rows moved", moved == n, f"{moved}/{n}"))
        results.append((f"step {step}: same kept rows on every rank", _same_on_all_ranks(kept), ""))
    handle.remove()
    step_timed = migu.attach(engine.module, threshold=0.7, optimizer=opt)
    try:
        accelerator.backward(engine(**_batch(0, rank, device)).loss)
        results.append(("default timing raises without .grad", False, "it did not raise"))
    except RuntimeError as err:
        results.append(("default timing raises without .grad", "in_backward" in str(err), ""))
    step_timed.remove()
    return _report(results, "zero2")


def fsdp2(device: torch.device) -> bool:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from torch.distributed.tensor import DTensor

    import migu

    results, rank, world = [], dist.get_rank(), dist.get_world_size()
    for mode in ("grad", "update"):
        model = _model(device)
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        kwargs = {"mp_policy": policy} if device.type == "cuda" else {}
        for layer in model.model.layers:
            fully_shard(layer, **kwargs)
        fully_shard(model, **kwargs)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
        handle = migu.attach(model, threshold=0.7, optimizer=opt, mask_mode=mode, micro_batches_per_step=1)
        results.append((f"{mode}: fast path on", len(handle.fast_path_layers) == len(handle.sources), ""))
        targets = {t.name: t for s in handle.sources for t in s.targets}
        for step in range(STEPS):
            model(**_batch(step, rank, device)).loss.backward()
            handle.before_optimizer_step()
            kept = {n: r.kept_rows for n, r in handle.report().items()}
            good = total = 0
            before = {}
            for name, t in targets.items():
                w = t.weight.detach()
                assert isinstance(w, DTensor)
                rows = torch.arange(w.shape[0]).chunk(world)
                mine = rows[rank] if rank < len(rows) else torch.arange(0)
                masked = _masked(w.shape[0], kept[name], torch.device("cpu"))[mine].to(w.to_local().device)
                if mode == "grad":
                    good += bool((t.weight.grad.to_local()[masked] == 0).all())
                before[name] = (w.to_local().clone(), masked)
                total += 1
            if mode == "grad":
                name = f"grad step {step}: masked rows of my shard get zero gradient"
                results.append((name, good == total, f"{good}/{total}"))
            results.append((f"{mode} step {step}: same kept rows on every rank", _same_on_all_ranks(kept), ""))
            opt.step()
            opt.zero_grad()
            if mode == "update":
                same = sum(bool(torch.equal(t.weight.detach().to_local()[m], b[m])) for t, (b, m) in
                           ((targets[n], before[n]) for n in targets))  # fmt: skip
                name = f"update step {step}: masked rows of my shard bit-identical"
                results.append((name, same == total, f"{same}/{total}"))
        handle.remove()
    return _report(results, "fsdp2")


def worker(engine: str) -> int:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if engine == "fsdp2":
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    ok = zero2(device) if engine == "zero2" else fsdp2(device)
    dist.barrier()
    dist.destroy_process_group()
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=None, help="default: GPUs (at most 2), or 2 on a CPU")
    parser.add_argument("--engine", choices=["zero2", "fsdp2"], help=argparse.SUPPRESS)  # (a launched rank)
    args = parser.parse_args()
    if args.engine:
        return worker(args.engine)
    n = args.processes or (min(2, torch.cuda.device_count()) if torch.cuda.is_available() else 2)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    launches = {"fsdp2": [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]}
    if importlib.util.find_spec("deepspeed") is not None:
        launches["zero2"] = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n),
                             "--use_deepspeed", "--zero_stage", "2"]  # fmt: skip
    else:
        print("SKIP zero2: deepspeed is not installed (pip install deepspeed)")
    failed = []
    for engine, launch in launches.items():
        start = time.perf_counter()
        done = subprocess.run([*launch, __file__, "--engine", engine], env=env, capture_output=True, text=True)
        print("".join(line + "\n" for line in done.stdout.splitlines() if line.startswith(("PASS", "FAIL"))), end="")
        status = "ok" if done.returncode == 0 else "FAILED"
        print(f"{engine}: {status} in {time.perf_counter() - start:.0f} s on {n} process(es)")
        if done.returncode != 0:
            failed.append(engine)
            print(done.stderr[-3000:], file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
