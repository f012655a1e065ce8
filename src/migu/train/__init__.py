"""The one training loop (on Accelerate) and its settings; task formats live in ``migu.formats``."""

from .config import TrainConfig
from .loop import make_accelerator, make_optimizer, train_task

__all__ = ["TrainConfig", "make_accelerator", "make_optimizer", "train_task"]
