"""One rank of the two-process DeepSpeed ZeRO-2 test (launched by test_deepspeed.py through
``accelerate launch --use_deepspeed``): MIGU with ``mask_timing="in_backward"``.

ZeRO-2 takes each gradient in a post-accumulate hook, reduces it into its own partition and
leaves no ``.grad``; with in-backward timing the gradient it takes is already masked. Plain SGD
(no momentum, no weight decay) leaves a row exactly unchanged iff its gradient was zero.
"""

from __future__ import annotations

import os
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

import migu
from fsdp_worker import GLOBAL, STEPS, step_batches

from tiny import build


def main(out_dir: str) -> None:
    config = {
        "train_micro_batch_size_per_gpu": GLOBAL // 2,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 0.0,
        "zero_optimization": {"stage": 2},
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
    engine, opt = accelerator.prepare(model, opt)
    handle = migu.attach(
        engine.module, threshold=0.7, optimizer=opt, mask_timing="in_backward", micro_batches_per_step=1
    )
    targets = {t.name: t for s in handle.sources for t in s.targets}
    record: dict = {"kept": [], "unchanged": [], "fast": handle.fast_path_layers}
    for step in range(STEPS):
        before = {n: t.weight.detach().clone() for n, t in targets.items()}
        (b,) = step_batches(step, 1, rank, world)
        accelerator.backward(engine(**b).loss)  # backward, then DeepSpeed's step
        opt.step()
        opt.zero_grad()
        kept = {n: r.kept_rows for n, r in handle.report().items()}
        assert all(t.weight.grad is None for t in targets.values())  # ZeRO-2 keeps no .grad
        unchanged = {}
        for name, t in targets.items():
            masked = torch.ones(t.weight.shape[0], dtype=torch.bool)
            masked[kept[name]] = False
            w = t.weight.detach()
            same = bool(torch.equal(w[masked], before[name][masked]))
            unchanged[name] = (same, bool((w[~masked] != before[name][~masked]).any()))
        record["kept"].append(kept)
        record["unchanged"].append(unchanged)
    record["params"] = {n: p.detach().float().clone() for n, p in engine.module.named_parameters()}
    handle.remove()
    # the default timing masks .grad before the step: under ZeRO-2 there is none, and it says so
    step_timed = migu.attach(engine.module, threshold=0.7, optimizer=opt)
    try:
        accelerator.backward(engine(**step_batches(0, 1, rank, world)[0]).loss)
        record["step_timed_error"] = None
    except RuntimeError as err:
        record["step_timed_error"] = str(err)
    step_timed.remove()
    torch.save(record, os.path.join(out_dir, f"rank{rank}.pt"))
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
