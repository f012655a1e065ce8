"""What the Fisher method (``finetune+fisher``, FGGM) adds once per task, for ``speed.py --fisher``:
its estimate of the diagonal empirical Fisher, against plain steps of the same task."""

from __future__ import annotations

import math
import statistics
import time
from itertools import cycle
from pathlib import Path

import torch
from speed_cases import SEQ, _step, minilm_task

from migu.core import MiguConfig, find_sources
from migu.methods.ewc import empirical_fisher
from migu.train import TrainConfig, make_optimizer

OPTIM = TrainConfig().optim
PAPER_CONFIG = Path(__file__).parents[1] / "configs" / "cpu" / "minilm_standard_paper.yaml"


def task_steps(config: Path = PAPER_CONFIG) -> int:
    """Optimizer steps of one task of a benchmark config (its examples, batch and epochs)."""
    from migu.bench import load_yaml, run_config

    raw = load_yaml(config)
    raw["method"] = "finetune+fisher"  # (a config may list several methods; one is one run's config)
    c = run_config(raw)
    assert c.data.n_train is not None
    return math.ceil(c.data.n_train / c.train.batch_size) * c.train.epochs


def measure_fisher(
    task: str,
    examples: int,
    batch_size: int,
    repeats: int,
    warmup: int,
    threshold: float,
    optim: str = OPTIM,
    seq: int = SEQ,
    batch: int = 8,
) -> dict[str, object]:
    """One round of the Fisher method's per-task cost: ``empirical_fisher`` of the masked weights
    (the layers of ``find_sources``, as ``fisher_rows`` passes them) over ``examples`` training
    examples of ``task`` in chunks of ``batch_size``, on the packaged MiniLM; and, in the same
    process, the median plain training step on ``batch`` real examples of that task (after
    ``warmup`` steps, which run before the estimate)."""
    torch.manual_seed(0)
    model, fmt, train = minilm_task(task, max(examples, batch), seq)
    batches = cycle([fmt.batch(train[i : i + batch]) for i in range(0, len(train) - batch + 1, batch)])
    opt = make_optimizer(list(model.parameters()), TrainConfig(lr=1e-5, optim=optim))
    model.train()
    for _ in range(warmup):  # the estimate and the timed steps on warm code paths
        _step(model, opt, next(batches), False, fmt.loss)
    sources = find_sources(model, MiguConfig(threshold=threshold))
    weights = {f"{t.name}.weight": t.weight for s in sources for t in s.targets}
    sample = train[:examples]
    start = time.perf_counter()
    empirical_fisher(model, lambda m, ex: fmt.loss(m, fmt.batch(ex)), sample, weights, batch_size)
    fisher_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _step(model, opt, next(batches), False, fmt.loss)
        times.append(time.perf_counter() - start)
    plain = statistics.median(times)
    steps = task_steps()
    return {
        "task": task,
        "examples": len(sample),
        "fisher_batch_size": batch_size,
        "fisher_s": fisher_s,
        "fisher_s_per_example": fisher_s / len(sample),
        "plain_step_s": plain,
        "plain_batch": batch,
        "plain_steps_per_estimate": fisher_s / plain,
        "task_steps": steps,
        "task_share": fisher_s / (steps * plain),
        "seq": seq,
        "repeats": repeats,
    }
