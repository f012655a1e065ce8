"""Model loading: packaged offline models, hub models and tiny random test models."""

from . import mlm_head  # noqa: F401  (registers the corpus-encoder builder: an MLM head)
from .loading import ARCHES, ModelBundle, load_model

__all__ = ["ARCHES", "ModelBundle", "load_model"]
