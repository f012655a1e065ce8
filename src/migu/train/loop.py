"""The one training loop: a task's examples, the methods' moments, AdamW, on Accelerate."""

from __future__ import annotations

import math
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from ..data.tasks import Example
from ..formats import Format
from ..methods.base import Method, TaskContext, task_seed
from ..methods.compose import MethodStack
from ..precision import autocast
from .config import TrainConfig
from .sharding import check_all_sharded, fsdp_requested, is_sharded


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (AVX512-BF16 or AMX). Without
    them, oneDNN emulates bf16 and a bf16-autocast step is many times slower than fp32 (measured
    14-20x for MiniLM on an AVX2-only AMD EPYC, BENCHMARKS.md)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # the probe is private: assume the best if it is gone
        return True


def make_optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """A fresh AdamW over ``params`` as ``config.optim`` names it. On a CPU torch's default is a
    loop over the parameters that allocates temporaries the size of each one every step (two of
    47 MB for MiniLM's embedding matrix, page-faulted anew whenever the allocator has returned
    them to the system); ``adamw_torch_fused`` updates in place in one kernel (BENCHMARKS.md,
    "Speed per CPU")."""
    fused = True if config.optim == "adamw_torch_fused" else None
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)


def make_accelerator(config: TrainConfig, log_with: list[str] | None = None,
                     project_dir: str | os.PathLike[str] | None = None) -> Accelerator:  # fmt: skip
    """Accelerate handles devices, processes, accumulation and experiment trackers (``log_with``,
    writing under ``project_dir``); bf16 autocast is ours (``autocast``), so that the model's
    ``forward`` is left as it is. Batches are split across processes
    (``split_batches``): ``train.micro_batch_size`` is the global micro-batch whatever the number
    of processes, so a run on N processes trains on the same batches as on one."""
    accelerator = Accelerator(
        gradient_accumulation_steps=config.accumulation_steps,
        cpu=not torch.cuda.is_available(),
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        # parts of a model that a task's loss does not reach (BERT's pooler) must not stall DDP
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        log_with=list(log_with) if log_with else None,
        project_dir=project_dir if log_with else None,
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise ValueError(
            f"{launched} processes were launched but Accelerate runs {accelerator.num_processes} as one group "
            f"({accelerator.distributed_type}); on CPU, Accelerate's FSDP and DeepSpeed plugins need a GPU: launch "
            "with `accelerate launch --cpu --num_processes N` or `torchrun --nproc_per_node N`"
        )
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not fsdp_requested():
        raise ValueError("an FSDP launch config of version 1: migu supports FSDP2 (fsdp_version: 2)")
    if config.micro_batch_size % accelerator.num_processes:
        raise ValueError(f"train.micro_batch_size ({config.micro_batch_size}) must be a multiple of the number of "
                         f"processes ({accelerator.num_processes}): each process trains on an equal slice")  # fmt: skip
    if config.mixed_precision == "bf16" and accelerator.device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(
            "train.mixed_precision=bf16 on a CPU without native bf16 (no AVX512-BF16/AMX): autocast emulates "
            "bf16 and is many times slower than fp32 here; set train.mixed_precision=no",
            stacklevel=2,
        )
    return accelerator


def set_dropout(model: nn.Module, p: float) -> None:
    """Every dropout probability of ``model`` to ``p``: ``nn.Dropout`` modules, and the float
    ``attention_dropout`` that Llama-style attention passes to its kernel."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = p  # type: ignore[assignment]  # a float, not a submodule


class NonFiniteLoss(ValueError):
    """The training loss became NaN or infinite: the run stops with one line (no results, the
    last finished task's checkpoint kept)."""


def _finite_everywhere(value: float, accelerator: Any) -> bool:
    """Whether the loss is finite on every rank (a collective under several processes: a rank that
    stopped alone would leave the others waiting in their next collective forever)."""
    finite = math.isfinite(value)
    if accelerator.num_processes > 1:
        flag = torch.tensor([0.0 if finite else 1.0], device=accelerator.device)
        finite = float(accelerator.reduce(flag, reduction="sum")) == 0
    return finite


def non_finite(ctx: TaskContext, step: int, value: float) -> str:
    where = f"{value}" if not math.isfinite(value) else "not finite in another process"
    return (
        f"task {ctx.index + 1} ({ctx.task.name}), step {step}: the training loss is {where}; the run stops, "
        "keeping its last finished task (lower train.lr, or check the data); the same command resumes from there"
    )


def _mean_over_ranks(value: torch.Tensor, accelerator: Any) -> float:
    """A rank's mean training loss averaged over the ranks (each trains on an equal slice of
    every batch), so that a run on N processes records the loss of the whole batches, as one
    process does (a collective: every rank calls it)."""
    if accelerator.num_processes > 1:
        value = accelerator.reduce(value.to(accelerator.device), reduction="mean")
    return float(value)


def epoch_seed(seed: int, index: int, epoch: int) -> int:
    """The seed of a task's epoch (data order and dropout): the first epoch's is the task's own."""
    return task_seed(seed, index) + 7_919_000 * epoch


@dataclass
class EpochState:
    """A task's training after ``epoch`` of its epochs: what continues it exactly
    (``train_task(resume=...)``) together with the model's weights and the methods' state."""

    epoch: int
    steps: int
    losses: torch.Tensor
    """The loss of every micro-batch so far, as trained."""
    step_seconds: list[float]
    seconds: float
    """Training time so far; the epoch-end callbacks (evaluations, saves) are not counted."""
    optimizer: dict[str, Any] = field(repr=False)
    scheduler: dict[str, Any] = field(repr=False)
    cpu_seconds: float = 0.0
    """The process's CPU time in training so far (all its threads; 0 in checkpoints of older migu)."""

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def train_task(
    model: nn.Module,
    fmt: Format,
    examples: list[Example],
    methods: MethodStack | list[Method],
    ctx: TaskContext,
    config: TrainConfig,
    accelerator: Accelerator,
    progress: bool = True,
    on_epoch_end: Callable[[EpochState], None] | None = None,
    resume: EpochState | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train on one task: a fresh AdamW over the trainable parameters, ``config.epochs`` passes
    over the (seeded, shuffled) examples; each epoch's data order and dropout are seeded by
    ``epoch_seed``. ``on_epoch_end(state)`` is called after every epoch but the last (e.g. to
    evaluate a learning curve, or to save ``state`` with the model and the methods' state);
    ``resume`` (such a state, loaded into a model and methods restored to that moment) continues
    the task after its ``resume.epoch`` epochs with the same results as an uninterrupted run.
    ``on_step(step, values)`` (trackers) is called after every optimizer step with the task's step
    count so far and the step's loss (``loss``) and the methods' ``step_log``.
    Under several processes each rank trains on its slice of every micro-batch (Accelerate's
    ``split_batches``), so the global batch is that of one process.
    Methods' moments are called with ``model`` itself, never with the wrapper that trains it.
    Returns step count, mean loss, training seconds, the median seconds per optimizer step, the
    seconds spent in ``on_epoch_end`` (in this process: not those before a resume), the process's
    CPU seconds in training (all threads) and the machine's 1-minute load average at the end."""
    stack = methods if isinstance(methods, MethodStack) else MethodStack(methods)
    if not examples:
        raise ValueError(f"task {ctx.task.name!r} has no training examples")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameter")
    generator = torch.Generator().manual_seed(epoch_seed(ctx.seed, ctx.index, 0))
    torch.manual_seed(epoch_seed(ctx.seed, ctx.index, 0))
    loader: DataLoader[Example] = DataLoader(
        examples,  # type: ignore[arg-type]  # (a list is a map-style dataset)
        batch_size=config.micro_batch_size,
        shuffle=True,
        generator=generator,  # type: ignore[arg-type]
        collate_fn=fmt.batch,
    )
    steps = math.ceil(len(loader) / config.accumulation_steps) * config.epochs
    optimizer = make_optimizer(params, config)
    scheduler = get_scheduler(config.schedule, optimizer, int(config.warmup_ratio * steps), steps)
    if is_sharded(model):  # FSDP2 applied by migu (on CPU): Accelerate must not wrap it in DDP as well
        check_all_sharded(model, f"method {stack.name!r} at task {ctx.task.name!r}")
        wrapped = model
        optimizer, loader = accelerator.prepare(optimizer, loader)
    else:
        wrapped, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    losses: list[torch.Tensor] = []
    step_seconds: list[float] = []
    done, first_epoch, trained_before, cpu_before = 0, 0, 0.0, 0.0
    if resume is not None:
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
        losses, step_seconds = list(resume.losses.to(accelerator.device).unbind()), list(resume.step_seconds)
        done, first_epoch, trained_before = resume.steps, resume.epoch, resume.seconds
        cpu_before = resume.cpu_seconds
    bar = tqdm(total=steps, initial=done, desc=f"train {ctx.task.name}", unit="step", disable=not progress,
               leave=False)  # fmt: skip
    wrapped.train()
    start = last = time.perf_counter()
    cpu_start = time.process_time()
    outside = cpu_outside = 0.0  # seconds (wall, CPU) spent in on_epoch_end
    step_start = len(losses)  # the first micro-batch loss of the current optimizer step
    for epoch in range(first_epoch, config.epochs):
        if epoch:  # the first epoch keeps the draws made since the task's seeding
            generator.manual_seed(epoch_seed(ctx.seed, ctx.index, epoch))
            torch.manual_seed(epoch_seed(ctx.seed, ctx.index, epoch))
        for batch in loader:
            with accelerator.accumulate(wrapped):
                with autocast(config.mixed_precision, accelerator.device):
                    loss = fmt.loss(wrapped, batch)
                extra = stack.extra_loss(model, ctx)
                if extra is not None:
                    loss = loss + extra
                accelerator.backward(loss)
                losses.append(loss.detach())
                if accelerator.sync_gradients:
                    value = float(losses[-1])  # (the progress bar reads it anyway: no extra sync)
                    if not _finite_everywhere(value, accelerator):
                        raise NonFiniteLoss(non_finite(ctx, done + 1, value))
                    # the methods' masks first, then clipping on the gradient that will be applied:
                    # the official MIGU order, and the one MIGU's fast path (rows masked during
                    # backward) computes, so that the fast and reference paths agree under clipping
                    stack.before_optimizer_step(model, ctx)
                    if config.max_grad_norm:
                        accelerator.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:
                    stack.after_optimizer_step(model, ctx)
                    scheduler.step()
                    done += 1
                    now = time.perf_counter()
                    step_seconds.append(now - last)
                    last = now
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.3f}")
                    if on_step is not None:  # the step's loss: the mean over its micro-batches
                        step_loss = float(torch.stack(losses[step_start:]).float().mean())
                        on_step(done, {"loss": step_loss, **stack.step_log(model, ctx)})
                    step_start = len(losses)
                optimizer.zero_grad(set_to_none=True)
        if on_epoch_end is not None and epoch + 1 < config.epochs:
            paused, cpu_paused = time.perf_counter(), time.process_time()
            wrapped.eval()
            seconds, cpu = trained_before + paused - start - outside, cpu_before + cpu_paused - cpu_start - cpu_outside
            on_epoch_end(EpochState(epoch + 1, done, torch.stack(losses).cpu(), step_seconds, seconds,
                                    optimizer.state_dict(), scheduler.state_dict(), cpu))  # fmt: skip
            wrapped.train()
            last = time.perf_counter()
            outside += last - paused
            cpu_outside += time.process_time() - cpu_paused
    bar.close()
    accelerator.free_memory()
    return {
        "steps": done,
        "examples": len(examples) * config.epochs,
        "mean_loss": _mean_over_ranks(torch.stack(losses).float().mean(), accelerator),
        "seconds": trained_before + time.perf_counter() - start - outside,
        "median_step_seconds": statistics.median(step_seconds) if step_seconds else 0.0,
        "epoch_end_seconds": outside,
        # wall seconds depend on what else ran: the CPU time and the machine's load tell
        "cpu_seconds": cpu_before + time.process_time() - cpu_start - cpu_outside,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
