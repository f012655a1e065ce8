"""migu: continual learning of language models without old data or task labels (MIGU).

``migu.attach(model, threshold=0.7, optimizer=opt)`` is all a training loop needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .core import LayerReport, MiguConfig, MiguHandle, attach

if TYPE_CHECKING:
    from .integrations.hf_trainer import MiguCallback, add_migu_callback

__version__ = "0.1.0"
__all__ = ["LayerReport", "MiguCallback", "MiguConfig", "MiguHandle", "__version__", "add_migu_callback", "attach"]


def __getattr__(name: str) -> Any:
    # The Trainer callback imports transformers, which is slow to import: load it on first use.
    if name in ("MiguCallback", "add_migu_callback"):
        from .integrations import hf_trainer

        return getattr(hf_trainer, name)
    raise AttributeError(f"module 'migu' has no attribute {name!r}")
