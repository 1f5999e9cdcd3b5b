"""SAE architectures. Importing this package registers every architecture (one import per file)."""

from saekit.sae import (
    batch_topk,  # noqa: F401
    clt,  # noqa: F401
    crosscoder,  # noqa: F401
    feature_choice,  # noqa: F401
    gated,  # noqa: F401
    gated_anneal,  # noqa: F401
    gradient_topk,  # noqa: F401
    jumprelu,  # noqa: F401
    matryoshka,  # noqa: F401
    p_anneal,  # noqa: F401
    relu,  # noqa: F401
    topk,  # noqa: F401
    transcoder,  # noqa: F401
)
from saekit.sae.base import SAE, OptimDefaults, SAEConfig
from saekit.sae.registry import build, get, list_architectures, register

__all__ = ["SAE", "SAEConfig", "OptimDefaults", "build", "get", "list_architectures", "register"]
