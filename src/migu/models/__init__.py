"""Model loading: packaged offline models, hub models and tiny random test models."""

from .loading import ARCHES, ModelBundle, load_model

__all__ = ["ARCHES", "ModelBundle", "load_model"]
