"""One optimizer step's selection: the kept rows of every layer, chosen once from the statistic."""

from __future__ import annotations

import torch

from .report import KeptRowsLog
from .selection import fast_rows, magnitude_keep, random_keep
from .statistics import Recorder
from .targets import Source


class StepSelection:
    """Chooses the step's rows once (all-reducing the statistic), logs them, and hands the fast
    path its rows; ``reset`` starts the next step."""

    def __init__(self, threshold: float, selection: str, seed: int, sync_distributed: bool) -> None:
        self.threshold = threshold
        self.selection = selection
        self.sync_distributed = sync_distributed
        self.generator = torch.Generator().manual_seed(seed)
        self.log = KeptRowsLog()
        self.keeps: list[torch.Tensor | None] | None = None
        self.fast_rows: dict[int, torch.Tensor] = {}
        self._forwards: tuple[list[int], list[int]] = ([], [])

    def decide(self, recorder: Recorder, sources: list[Source], strict: bool = False) -> list[torch.Tensor | None]:
        """The selection, made at the first call of the step; a training forward after it means it
        saw part of the statistic (``strict``: forwards recomputed inside backward count too)."""
        if self.keeps is None:
            self.keeps = self._select(recorder, sources, recorder.gather(self.sync_distributed))
            self._forwards = (list(recorder.forwards), list(recorder.outside))
            recorder.decided = True
        elif recorder.outside != self._forwards[1] or (strict and recorder.forwards != self._forwards[0]):
            raise RuntimeError(
                "MIGU chose this step's rows during a backward, and a training forward ran after that, so "
                "the choice missed part of the statistic: mask in backward only in the step's last backward, "
                "and not under gradient checkpointing (it runs forwards inside backward)"
            )
        return self.keeps

    def reset(self) -> None:
        self.keeps, self._forwards = None, ([], [])
        self.fast_rows.clear()

    def _select(
        self, recorder: Recorder, sources: list[Source], buffers: list[torch.Tensor]
    ) -> list[torch.Tensor | None]:
        groups: dict[tuple[int, torch.device], list[int]] = {}
        for i, buffer in enumerate(buffers):
            if recorder.forwards[i]:
                groups.setdefault((buffer.numel() - 1, buffer.device), []).append(i)
        keeps: list[torch.Tensor | None] = [None] * len(buffers)
        for indices in groups.values():
            stats = torch.stack([buffers[i][:-1] for i in indices])
            if self.selection == "random":
                keep = random_keep(stats, self.threshold, self.generator)
            else:
                keep = magnitude_keep(stats, self.threshold)
            on_fast = [row for row, i in enumerate(indices) if i in recorder.fast_sources]
            if on_fast:  # the fast path computes a fixed number of rows: with exact ties, fewer
                rows = fast_rows(stats[on_fast], self.threshold)
                keep[on_fast] &= torch.zeros_like(keep[on_fast]).scatter_(1, rows, True)
                for k, row in enumerate(on_fast):
                    self.fast_rows[indices[row]] = rows[k]
            self.log.add([sources[i].name for i in indices], keep)
            for row, i in enumerate(indices):
                keeps[i] = keep[row]
        return keeps
