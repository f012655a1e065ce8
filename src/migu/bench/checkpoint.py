"""Checkpoints of a run: what is saved at task ends (and at epoch ends of multi-epoch tasks), how a
resume loads it, and the ``RunCheckpointer`` the protocol saves through.

A checkpoint holds what training changed (every weight under finetuning, the adapters under
LoRA) and the methods' state; the frozen rest is loaded again from the model's source on resume,
and a hash of it (``frozen_digest``) must match the interrupted run's.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import DistributedType

from ..methods.compose import MethodStack
from ..train.loop import EpochState
from ..train.sharding import migu_shards
from .store import RunStore


class RunCheckpointer:
    """Saves a run's state, model and methods through its ``RunStore`` (the protocol's
    ``Checkpointer``); only the main process writes, every rank takes part in gathering."""

    def __init__(self, store: RunStore, methods: MethodStack, accelerator: Any) -> None:
        self.store, self.methods, self.accelerator = store, methods, accelerator
        # FSDP and DeepSpeed shard the optimizer's state: there a run resumes at task ends only
        unsharded = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
        self.epoch_checkpoints = accelerator.distributed_type in unsharded and not migu_shards(accelerator)

    def save(self, state: dict[str, Any], model: torch.nn.Module, epoch: EpochState | None) -> None:
        """The state, the model's changed weights and the methods at a task end, or within task
        ``state["completed"]`` (0-based) after ``epoch`` (with the optimizer's state)."""
        full = full_state_dict(model)  # every rank takes part (FSDP gathers); rank 0 gets the tensors
        if not self.accelerator.is_main_process:
            return
        state["frozen_digest"] = frozen_digest(model, state, full)
        payload = {"model": changed_state(model, state, full), "methods": self.methods.state_dict()}
        if epoch is None:
            state.pop("in_task", None)
            name = f"after_task{state['completed']}.pt"
        else:
            state["in_task"] = {"epoch": epoch.epoch}
            payload["epoch"] = epoch.to_dict()
            name = f"task{state['completed'] + 1}_epoch{epoch.epoch}.pt"
        self.store.save_progress(state, payload, name)

    def save_artifacts(self, task_index: int, task: str, method: str, items: dict[str, Any]) -> None:
        self.store.save_artifacts(task_index, task, method, items)

    def resume_in_task(self, model: torch.nn.Module, state: dict[str, Any]) -> EpochState | None:
        """For a state saved within a task: load it into the model (the task's ``before_task`` has
        run) and the methods, and return where training stands; None otherwise."""
        if "in_task" not in state:
            return None
        checkpoint = load_into(self.store, model, self.methods, state)
        del state["in_task"]  # (on disk until the next save)
        return EpochState(**checkpoint["epoch"])


def load_into(store: RunStore, model: torch.nn.Module, methods: MethodStack, state: dict[str, Any]) -> Any:
    """Load the state's checkpoint into the rebuilt model and the methods; returns the checkpoint."""
    checkpoint = store.load_checkpoint(state["checkpoint"])
    if "trained_parameters" not in state:  # a checkpoint of the whole model (older migu)
        state["trained_parameters"] = sorted(checkpoint["model"])
    if state.get("frozen_digest") not in (None, frozen_digest(model, state)):
        raise ValueError(
            f"{store.dir}: the weights no task trained (loaded again from the model's source) differ "
            "from those of the interrupted run: the model source changed; restore it or delete that folder"
        )
    load_checkpoint(model, checkpoint["model"], state, store.state_dir / state["checkpoint"])
    methods.load_state_dict(checkpoint["methods"])
    return checkpoint


def full_state_dict(model: torch.nn.Module) -> dict[str, Any]:
    """The model's whole state as plain tensors: under FSDP2 (sharded DTensor weights) gathered to
    CPU on rank 0 (a collective: every rank calls it; the others get an empty dict)."""
    from torch.distributed.tensor import DTensor

    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def changed_state(model: Any, state: dict[str, Any], full: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model's state (``full``, by default ``model.state_dict()``) without the parameters no
    task has trained (a frozen base under LoRA is loaded again from its source on resume): an
    adapter checkpoint, not a copy of the model. The resume checks that source against
    ``frozen_digest``."""
    trained = set(state.get("trained_parameters", []))
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    full = model.state_dict() if full is None else full
    return {k: v for k, v in full.items() if k not in params or k in trained}


def frozen_digest(model: Any, state: dict[str, Any], full: dict[str, Any] | None = None) -> str:
    """A hash of the parameters left out of checkpoints, to tell on resume that they are the same."""
    trained, digest = set(state.get("trained_parameters", ())), hashlib.sha256()
    values = dict(model.named_parameters()) if full is None else full
    for name, _ in model.named_parameters():
        if name not in trained:
            digest.update(name.encode())
            digest.update(values[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_checkpoint(model: Any, saved: dict[str, Any], state: dict[str, Any], path: Path) -> None:
    """Load a checkpoint of ``changed_state``; only never-trained parameters may be missing."""
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    untrained = params - set(state["trained_parameters"])
    result = model.load_state_dict(saved, strict=False)
    trained_missing = [k for k in result.missing_keys if k not in untrained]
    if result.unexpected_keys or trained_missing:
        raise ValueError(f"{path} does not fit the model rebuilt for resuming: unexpected "
                         f"{result.unexpected_keys[:5]}, missing {trained_missing[:5]}")  # fmt: skip
