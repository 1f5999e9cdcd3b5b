"""Language models whose activations SAEs are trained on (needs ``transformers``)."""

from saekit.models.load import DEFAULT_MODEL, LoadedModel, default_cache_dir, load_model

__all__ = ["DEFAULT_MODEL", "LoadedModel", "default_cache_dir", "load_model"]
