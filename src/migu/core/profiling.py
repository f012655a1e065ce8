"""Named scopes for torch.profiler, free when no profiler runs.

``torch.profiler.record_function`` costs tens of microseconds per call even without a profiler;
``scope`` checks first (a fraction of a microsecond), so MIGU's hooks can stay annotated.
``benchmarks/profile_step.py`` splits a step's time by these names.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch

STATISTIC = "migu.statistic"  # |output| summed over tokens, in the forward hook
WRAP = "migu.fast.wrap"  # handing the output to the fast path's autograd function
FAST_GRAD = "migu.fast.weight_grad"  # the fast path's weight gradient (its kernel) in backward
SELECT = "migu.select"  # ranking the rows of a step
MASK = "migu.mask"  # masking gradients before the optimizer step
RESTORE = "migu.restore"  # update mode: saving and restoring masked rows
HOOKS = "migu.optimizer_hooks"  # the rest of MIGU's work around optimizer.step() (bookkeeping)


def scope(name: str) -> AbstractContextManager[object]:
    """``record_function(name)`` while a profiler records, else a no-op context."""
    if torch._C._autograd._profiler_enabled():
        return torch.profiler.record_function(name)
    return nullcontext()


def scoped_call(name: str, function: Callable[[], None]) -> None:
    """Call ``function`` inside ``scope(name)``."""
    with scope(name):
        function()
