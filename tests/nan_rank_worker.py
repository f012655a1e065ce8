"""One rank of the NaN-on-one-rank test (run by torchrun from test_distributed.py): rank 1's
loss turns NaN at the second step; every rank must stop there with NonFiniteLoss, none may hang."""

import sys
from pathlib import Path

import torch

from migu.data import Example
from migu.data.tasks import Task
from migu.formats import make_format
from migu.methods import Method, TaskContext
from migu.models import load_model
from migu.train import TrainConfig, make_accelerator, train_task
from migu.train.loop import NonFiniteLoss


class NanOnRankOne(Method):
    """Adds NaN to rank 1's loss from its second step on."""

    name = "nan_on_rank_one"

    def __init__(self, rank: int) -> None:
        self.rank, self.steps = rank, 0

    def extra_loss(self, model, ctx):
        return torch.tensor(float("nan")) if self.rank == 1 and self.steps >= 1 else None

    def after_optimizer_step(self, model, ctx):
        self.steps += 1


def main(out_dir: str) -> None:
    config = TrainConfig(lr=1e-3, batch_size=4, micro_batch_size=4, max_length=16, dropout=0.0)
    accelerator = make_accelerator(config)
    rank = accelerator.process_index
    bundle = load_model("tiny-bert")
    examples = [Example(f"text {i}", "a" if i % 2 else "b", ("a", "b"), "Which?", "t") for i in range(16)]
    task = Task("t", "Which?", ("a", "b"), examples, examples)
    fmt = make_format("encoder", bundle.tokenizer, 16)
    try:
        train_task(bundle.model, fmt, examples, [NanOnRankOne(rank)], TaskContext(0, task, 1, 0, 1), config,
                   accelerator, progress=False)  # fmt: skip
        outcome = "finished"
    except NonFiniteLoss as err:
        outcome = f"stopped: {err}"
    Path(out_dir, f"rank{rank}.txt").write_text(outcome)


if __name__ == "__main__":
    main(sys.argv[1])
