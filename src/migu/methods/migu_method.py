"""MIGU as a method of the loop, and the random-rows control (``random_update``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from torch import nn

from ..core import MiguConfig, MiguHandle
from ..core.report import kept_share
from ..settings import check_value, from_mapping
from .base import METHODS, Method, TaskContext, task_seed


@dataclass
class MiguMethodConfig:
    """MIGU's settings in a run: the core ``MiguConfig`` plus when to mask."""

    skip_first_task: bool = True
    """Train the first task of the sequence unmasked, as the official code does."""
    core: MiguConfig = field(default_factory=MiguConfig)
    """Threshold, layers, mask mode, padding, ... (see ``migu.MiguConfig``)."""

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "methods.migu") -> MiguMethodConfig:
        """From ``methods.migu``: ``skip_first_task`` and the fields of ``MiguConfig``, each
        checked against its annotation (``migu.settings``); errors name ``where.<key>``."""
        values = dict(values or {})
        skip = check_value(values.pop("skip_first_task", True), bool, f"{where}.skip_first_task")
        known = {f.name for f in fields(MiguConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{where}: unknown MIGU setting(s) {unknown}; known: skip_first_task, {', '.join(sorted(known))}"
            )
        try:
            core = from_mapping(MiguConfig, values, where)
        except (TypeError, ValueError) as err:  # MiguConfig's own checks name the field, not the section
            message = str(err)
            raise ValueError(message if message.startswith(where) else f"{where}: {message}") from None
        return cls(skip_first_task=skip, core=core)

    def to_dict(self) -> dict[str, Any]:
        return {"skip_first_task": self.skip_first_task, **asdict(self.core)}


class Migu(Method):
    """Masks gradient rows by output-channel magnitude (or at random, for the control)."""

    name = "migu"
    stage = "gradient"

    def __init__(self, config: MiguMethodConfig | None = None) -> None:
        self.config = config or MiguMethodConfig()
        self.handle: MiguHandle | None = None

    def check_sequence(self, num_tasks: int) -> None:
        """Skipping the first task of a one-task sequence (instruction tuning) would leave MIGU
        nothing to act on: the run would train exactly as without it."""
        if num_tasks == 1 and self.config.skip_first_task:
            raise ValueError(
                f"methods.{self.name}.skip_first_task is true (the default: a sequence's first task trains "
                f"unmasked) but the sequence has one task, so {self.name} would never act; "
                f"set methods.{self.name}.skip_first_task=false"
            )

    def before_task(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        if self.handle is None:
            self.handle = MiguHandle(model, self.config.core)
        else:
            self.handle.refresh()  # a method may have added trainable layers (new adapters)
        self.handle.reseed(self.config.core.seed + task_seed(ctx.seed, ctx.index))
        self.handle.set_micro_batches_per_step(ctx.micro_batches_per_step)
        self.handle.reset_report()
        if ctx.index == 0 and self.config.skip_first_task:
            self.handle.pause()
        else:
            self.handle.resume()
        return model

    def state_dict(self) -> dict[str, Any]:
        """Within a task: the random selection's generator and the kept-rows record (at a task
        boundary ``before_task`` reseeds and clears both)."""
        return {"handle": self.handle.state_dict()} if self.handle is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.handle is not None and "handle" in state:
            self.handle.load_state_dict(state["handle"])

    def before_optimizer_step(self, model: nn.Module, ctx: TaskContext) -> None:
        assert self.handle is not None
        self.handle.before_optimizer_step()

    def after_optimizer_step(self, model: nn.Module, ctx: TaskContext) -> None:
        assert self.handle is not None
        self.handle.after_optimizer_step()

    def step_log(self, model: nn.Module, ctx: TaskContext) -> dict[str, float]:
        """``kept_fraction``: the share of the masked layers' rows kept at this step (none while
        the task trains unmasked)."""
        assert self.handle is not None
        share = None if self.handle.is_paused else kept_share(self.handle.kept_masks())
        return {} if share is None else {"kept_fraction": share}

    def artifacts(self, model: nn.Module, ctx: TaskContext) -> dict[str, Mapping[str, Any]]:
        """``kept_rows``: per layer, the rows kept at the task's last step and at any step of it
        (``"<layer>/last"``, ``"<layer>/ever"``); nothing for a task trained unmasked."""
        assert self.handle is not None
        masks = self.handle.kept_masks()
        if not masks:
            return {}
        arrays = {}
        for layer, (last, ever) in masks.items():
            arrays[f"{layer}/last"], arrays[f"{layer}/ever"] = last.numpy(), ever.numpy()
        return {"kept_rows": arrays}

    def after_task(self, model: nn.Module, ctx: TaskContext) -> dict[str, Any]:
        assert self.handle is not None
        layers = [r for r in self.handle.report().values() if r.steps]
        if not layers:
            return {"masked": False}

        def mean(values: list[float | None]) -> float | None:
            xs = [v for v in values if v is not None]
            return sum(xs) / len(xs) if xs else None

        return {
            "masked": True,
            "layers": len(layers),
            "fast_path_layers": len(self.handle.fast_path_layers),
            "steps": layers[0].steps,
            "kept_fraction": mean([r.kept_fraction for r in layers]),
            "ever_kept_fraction": mean([r.ever_kept_fraction for r in layers]),
            "consecutive_jaccard": mean([r.mean_jaccard for r in layers]),
            "update_leak": self.handle.update_leak(),
        }


class RandomUpdate(Migu):
    """The control: as many rows per layer and step as MIGU keeps, chosen at random."""

    name = "random_update"

    def __init__(self, config: MiguMethodConfig | None = None) -> None:
        config = config or MiguMethodConfig()
        super().__init__(MiguMethodConfig(config.skip_first_task, replace(config.core, selection="random")))


METHODS.register("migu", Migu, MiguMethodConfig, chooses_rows=True)
METHODS.register("random_update", RandomUpdate, MiguMethodConfig, chooses_rows=True)
