"""Task formats: how a kind of model reads a kind of task (batches, the training loss, and the
optional abilities: answering, token loss, replay). Importing the package registers them all:

- ``options``: labelled text on an encoder (label embeddings), a decoder or an encoder-decoder
  (generated or ranked answers): ``migu.formats.options``;
- ``corpus``: masked LM (encoders) and causal LM (decoders): ``migu.formats.lm``;
- ``instruction``: prompt/response pairs on a decoder: ``migu.formats.instruct``.
"""

from . import instruct, lm, options  # noqa: F401  (each registers its formats)
from .base import FORMATS, Answers, Batch, Format, Replays, TokenLoss, make_format, register_format, unwrap
from .instruct import InstructionFormat
from .lm import CausalLMFormat, MaskedLMFormat
from .options import LABEL_MAX_LENGTH, DecoderFormat, EncoderDecoderFormat, EncoderFormat, normalize_answer

__all__ = [
    "FORMATS",
    "LABEL_MAX_LENGTH",
    "Answers",
    "Batch",
    "CausalLMFormat",
    "DecoderFormat",
    "EncoderDecoderFormat",
    "EncoderFormat",
    "Format",
    "InstructionFormat",
    "MaskedLMFormat",
    "Replays",
    "TokenLoss",
    "make_format",
    "normalize_answer",
    "register_format",
    "unwrap",
]
