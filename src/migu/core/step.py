"""One optimizer step's selection: the kept rows of every layer, chosen once from the statistic."""

from __future__ import annotations

import threading
from typing import Any

import torch

from .config import MiguConfig
from .profiling import SELECT, scope
from .report import KeptRowsLog
from .scores import gradient_rows
from .selection import fast_rows, magnitude_keep, random_keep
from .statistics import Recorder
from .targets import Source, Target


class StepSelection:
    """Chooses the step's rows once (all-reducing the statistic), logs them, and hands the fast
    path its rows; ``reset`` starts the next step."""

    def __init__(self, config: MiguConfig) -> None:
        self.config = config  # (the handle's own: its threshold, selection and sync_distributed)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.given: dict[str, torch.Tensor] = {}  # selection "given": scores by source name
        self.log = KeptRowsLog()
        self.keeps: list[torch.Tensor | None] | None = None
        self.fast_rows: dict[int, torch.Tensor] = {}
        self._forwards: tuple[list[int], int] = ([], 0)
        self._recorded = -1
        self._lock = threading.Lock()  # autograd runs the hooks of each device on its own thread

    def decide(
        self, recorder: Recorder, sources: list[Source], fast: set[int], strict: bool = False
    ) -> list[torch.Tensor | None]:
        """The selection, made at the first call of the step; a training forward after it means it
        saw part of the statistic (``strict``: forwards recomputed inside backward count too).
        The sources in ``fast`` (on the fast path) keep exactly the fast path's number of rows.

        A layer first recorded after that, inside backward (a block under reentrant gradient
        checkpointing runs its forward without gradients, and records only when recomputed), gets
        its rows at the next call, from its then complete statistic."""
        with self._lock, scope(SELECT):
            return self._decide(recorder, sources, fast, strict)

    def _decide(
        self, recorder: Recorder, sources: list[Source], fast: set[int], strict: bool
    ) -> list[torch.Tensor | None]:
        first = self.keeps is None
        if self.keeps is None:
            self.keeps = [None] * len(sources)
            self._forwards = (list(recorder.forwards), recorder.outside)
            self._recorded = -1
            recorder.decided = True
        elif recorder.outside != self._forwards[1] or (strict and recorder.forwards != self._forwards[0]):
            raise RuntimeError(
                "MIGU chose this step's rows during a backward, and a training forward ran after that, so "
                "the choice missed part of the statistic: mask in backward only in the step's last backward, "
                "and not under gradient checkpointing (it runs forwards inside backward)"
            )
        if recorder.recorded != self._recorded:  # new layers recorded since the last call
            self._recorded = recorder.recorded
            late = [i for i, keep in enumerate(self.keeps) if keep is None and recorder.forwards[i]]
            if late:  # the first time, every buffer is all-reduced: the same sizes on every rank
                self._select(recorder, sources, fast, late, None if first else late)
        return self.keeps

    def set_given(self, sources: list[Source], scores: dict[str, torch.Tensor]) -> None:
        """Scores for ``selection="given"`` by source name, each one value per row (checked)."""
        rows = {s.name: s.rows() for s in sources}
        unknown = sorted(set(scores) - set(rows))
        if unknown:
            raise ValueError(f"set_row_scores: {unknown[:3]} are not layers of this handle (e.g. {next(iter(rows))})")
        for name, values in scores.items():
            if tuple(values.shape) != (rows[name],):
                raise ValueError(f"set_row_scores: {name} has {rows[name]} rows, got scores of shape "
                                 f"{tuple(values.shape)}")  # fmt: skip
        self.given = {name: values.detach().float() for name, values in scores.items()}

    def _scores(self, index: int, source: Source, buffer: torch.Tensor) -> torch.Tensor:
        """The row scores of one source: its forward statistic (magnitude, random), its step's
        weight-gradient rows (gradient) or the scores set for it (given)."""
        selection = self.config.selection
        if selection == "gradient":
            return gradient_rows(source).to(buffer.device)
        if selection == "given":
            if source.name not in self.given:
                raise ValueError(f"selection='given' but no row scores were set for layer {source.name} "
                                 "(MiguHandle.set_row_scores)")  # fmt: skip
            return self.given[source.name].to(buffer.device)
        return buffer[:-1]

    def state_dict(self) -> dict[str, Any]:
        """What outlives a step: the random selection's generator and the kept-rows record."""
        return {"generator": self.generator.get_state(), "log": self.log.state_dict()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.generator.set_state(state["generator"])
        self.log.load_state_dict(state["log"], device)

    def reset(self) -> None:
        self.keeps, self._forwards, self._recorded = None, ([], 0), -1
        self.fast_rows.clear()

    def _select(
        self, recorder: Recorder, sources: list[Source], fast: set[int], indices: list[int], reduce: list[int] | None
    ) -> None:
        """Choose the rows of the sources ``indices`` (all recorded), stacking layers of equal width;
        the buffers of ``reduce`` (None: all) are first summed over ranks."""
        assert self.keeps is not None
        threshold = self.config.threshold
        buffers = recorder.gather(self.config.sync_distributed, reduce)
        groups: dict[tuple[int, torch.device], list[int]] = {}
        for i in indices:
            groups.setdefault((buffers[i].numel() - 1, buffers[i].device), []).append(i)
        for members in groups.values():
            stats = torch.stack([self._scores(i, sources[i], buffers[i]) for i in members])
            if self.config.selection == "random":
                keep = random_keep(stats, threshold, self.generator)
            else:
                keep = magnitude_keep(stats, threshold)
            on_fast = [row for row, i in enumerate(members) if i in fast]
            if on_fast:  # the fast path computes a fixed number of rows: with exact ties, fewer
                rows = fast_rows(stats[on_fast], threshold)
                keep[on_fast] &= torch.zeros_like(keep[on_fast]).scatter_(1, rows, True)
                for k, row in enumerate(on_fast):
                    self.fast_rows[members[row]] = rows[k]
            self.log.add([sources[i].name for i in members], keep)
            for row, i in enumerate(members):
                self.keeps[i] = keep[row]


def step_gradients(recorder: Recorder, sources: list[Source]) -> list[tuple[int, Target]]:
    """The masked weights (with their source's index) that have a gradient in this step, checked:
    at least one, and each recorded by a training forward."""
    with_grad = [(i, t) for i, s in enumerate(sources) for t in s.targets if t.weight.grad is not None]
    if not with_grad:
        raise RuntimeError(
            "MIGU found no gradient on any of its layers, so masking would do nothing. Call it after "
            "backward; under DeepSpeed ZeRO-2/3 gradients do not live in .grad: use "
            "mask_timing='in_backward', which masks them during backward"
        )
    for i, target in with_grad:
        if recorder.forwards[i] == 0:
            raise ValueError(
                f"layer {target.name} has a gradient but MIGU recorded no training forward for it "
                "(was it run in eval mode or under torch.no_grad?)"
            )
    return with_grad
