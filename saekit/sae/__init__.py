"""SAE architectures. Importing this package registers every architecture (one import per file)."""

from saekit.sae import topk  # noqa: F401
from saekit.sae import relu  # noqa: F401
from saekit.sae import batch_topk  # noqa: F401
from saekit.sae import jumprelu  # noqa: F401
from saekit.sae import gated  # noqa: F401
from saekit.sae import gradient_topk  # noqa: F401
from saekit.sae import feature_choice  # noqa: F401
from saekit.sae import p_anneal  # noqa: F401
from saekit.sae.base import SAE, OptimDefaults, SAEConfig
from saekit.sae.registry import build, get, list_architectures, register

__all__ = ["SAE", "SAEConfig", "OptimDefaults", "build", "get", "list_architectures", "register"]
