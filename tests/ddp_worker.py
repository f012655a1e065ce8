"""One rank of the two-process DDP test (run by torchrun from test_distributed.py)."""

import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import migu
from migu.core.reference import ReferenceStatistic

from tiny import batch, build, expected_layers


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = build("bert", seed=0)
    names = expected_layers("bert", "all_linear")
    ref = ReferenceStatistic(model, names)
    ddp = DistributedDataParallel(model)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-2)
    with migu.attach(model, micro_batches_per_step=1) as probe:
        assert probe.fast_path_layers == []  # the statistic must be reduced first: reference path
    handle = migu.attach(model, threshold=0.7, optimizer=opt)
    record = {"local_sums": [], "kept": []}
    for step in range(3):
        for micro in range(2):  # different data on each rank, two micro-batches per step
            b = batch("bert", seed=1000 * rank + 10 * step + micro, size=2)
            if micro == 0:
                with ddp.no_sync():
                    ddp(**b).loss.backward()
            else:
                ddp(**b).loss.backward()
        opt.step()
        opt.zero_grad()
        record["local_sums"].append({n: ref.sums[n].clone() for n in names})
        record["kept"].append({n: r.kept_rows for n, r in handle.report().items()})
        ref.sums = dict.fromkeys(names)
    record["params"] = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.save(record, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
