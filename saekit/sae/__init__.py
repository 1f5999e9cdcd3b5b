"""SAE architectures. Importing this package registers every architecture (one import per file)."""

from saekit.sae import topk  # noqa: F401
from saekit.sae.base import SAE, OptimDefaults, SAEConfig
from saekit.sae.registry import build, get, list_architectures, register

__all__ = ["SAE", "SAEConfig", "OptimDefaults", "build", "get", "list_architectures", "register"]
