"""Language models whose activations SAEs are trained on (needs ``transformers``)."""

from saekit.models.load import DEFAULT_MODEL, LoadedModel, as_module, default_cache_dir, load_model

__all__ = ["DEFAULT_MODEL", "LoadedModel", "as_module", "default_cache_dir", "load_model"]
