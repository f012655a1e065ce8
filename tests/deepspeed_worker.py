"""One rank of the two-process DeepSpeed ZeRO-2/3 test (launched by test_deepspeed.py through
``accelerate launch --use_deepspeed``): MIGU with ``mask_timing="in_backward"``.

ZeRO-2 takes each gradient in a post-accumulate hook, reduces it into its own partition and
leaves no ``.grad``; with in-backward timing the gradient it takes is already masked. Plain SGD
(no momentum, no weight decay) leaves a row exactly unchanged iff its gradient was zero. ZeRO-3
also partitions the weights: MIGU is attached before ``prepare``, while they are whole.
"""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext

import torch
from accelerate import Accelerator
from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

import migu
from fsdp_worker import GLOBAL, STEPS, step_batches

from tiny import build


def main(out_dir: str, stage: int) -> None:
    config = {
        "train_micro_batch_size_per_gpu": GLOBAL // 2,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 0.0,
        "zero_optimization": {"stage": stage},
    }
    # Accelerate picks no process-group backend for DeepSpeed on a machine without an accelerator
    # (it would count one process per rank): name gloo
    accelerator = Accelerator(
        deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=config),
        kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")],
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    assert world == 2 and accelerator.distributed_type == "DEEPSPEED", (world, accelerator.distributed_type)
    model = build("bert", seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    early = (
        migu.attach(model, threshold=0.7, mask_timing="in_backward", micro_batches_per_step=1) if stage == 3 else None
    )
    engine, opt = accelerator.prepare(model, opt)
    if early is not None:
        handle = early
        handle.attach_optimizer(opt)
    else:
        handle = migu.attach(
            engine.module, threshold=0.7, optimizer=opt, mask_timing="in_backward", micro_batches_per_step=1
        )
    targets = {t.name: t for s in handle.sources for t in s.targets}
    record: dict = {"kept": [], "unchanged": [], "fast": handle.fast_path_layers}

    def whole():  # ZeRO-3: gather the partitioned weights to read them
        if stage < 3:
            return nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters([t.weight for t in targets.values()])

    for step in range(STEPS):
        with whole():
            before = {n: t.weight.detach().clone() for n, t in targets.items()}
        (b,) = step_batches(step, 1, rank, world)
        accelerator.backward(engine(**b).loss)  # backward, then DeepSpeed's step
        opt.step()
        opt.zero_grad()
        kept = {n: r.kept_rows for n, r in handle.report().items()}
        assert all(t.weight.grad is None for t in targets.values())  # ZeRO-2/3 keep no .grad
        unchanged = {}
        with whole():
            after = {n: t.weight.detach().clone() for n, t in targets.items()}
        for name, w in after.items():
            masked = torch.ones(w.shape[0], dtype=torch.bool)
            masked[kept[name]] = False
            same = bool(torch.equal(w[masked], before[name][masked]))
            unchanged[name] = (same, bool((w[~masked] != before[name][~masked]).any()))
        record["kept"].append(kept)
        record["unchanged"].append(unchanged)
    params = dict(engine.module.named_parameters())
    if stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(params.values())):
            record["params"] = {n: p.detach().float().clone() for n, p in params.items()}
    else:
        record["params"] = {n: p.detach().float().clone() for n, p in params.items()}
    handle.remove()
    try:  # the default timing masks .grad before the step: ZeRO keeps none, and it says so
        migu.attach(engine.module, threshold=0.7, optimizer=opt)  # (the process ends after this)
        accelerator.backward(engine(**step_batches(0, 1, rank, world)[0]).loss)
        record["step_timed_error"] = None
    except (RuntimeError, ValueError) as err:  # ZeRO-3: attaching to partitioned weights already
        record["step_timed_error"] = str(err)
    torch.save(record, os.path.join(out_dir, f"rank{rank}.pt"))
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
