"""The benchmark runner: task orders, runs, result files, resume."""

from .config import DataConfig, RunConfig, apply_overrides, load_yaml, run_config
from .fingerprint import config_fingerprint, fingerprint_matches
from .runner import RunInProgress, load_tasks, run

__all__ = [
    "DataConfig",
    "RunConfig",
    "RunInProgress",
    "apply_overrides",
    "config_fingerprint",
    "fingerprint_matches",
    "load_tasks",
    "load_yaml",
    "run",
    "run_config",
]
