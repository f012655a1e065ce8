"""The one training loop, the task formats per model kind, and evaluation."""

from . import lm  # noqa: F401  (registers the corpus formats: masked LM, causal LM)
from .config import TrainConfig
from .evaluate import accuracy
from .formats import DecoderFormat, EncoderDecoderFormat, EncoderFormat, make_format, normalize_answer
from .instruct import InstructionFormat  # also registers the (instruction, decoder) format
from .loop import make_accelerator, make_optimizer, train_task

__all__ = [
    "DecoderFormat",
    "EncoderDecoderFormat",
    "EncoderFormat",
    "InstructionFormat",
    "TrainConfig",
    "accuracy",
    "make_accelerator",
    "make_format",
    "make_optimizer",
    "normalize_answer",
    "train_task",
]
