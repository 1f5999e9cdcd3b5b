"""saekit: sparse autoencoders on language-model activations, many at once.

    import saekit
    sae = saekit.build_sae("topk", d_in=576, d_sae=4608, k=32)
    sae = saekit.train(sae, "acts.npy", steps=2000, batch_size=4096)
    saekit.save_sae(sae, "my-sae")
    print(saekit.evaluate(saekit.load_sae("my-sae"), "acts.npy"))
"""

__version__ = "0.1.0"

from saekit.errors import ArtifactError, ConfigError, DataError, SaekitError, UnknownArchitectureError
from saekit.eval.downstream import DownstreamMetrics, downstream_metrics
from saekit.eval.evaluate import evaluate, evaluate_on_model
from saekit.eval.suite import evaluate_suite, write_suite_report
from saekit.eval.recovery import feature_recovery
from saekit.io import is_sae_folder, load_sae, load_suite, save_sae, save_suite
from saekit.sae import SAE, SAEConfig
from saekit.sae.registry import build as build_sae
from saekit.sae.registry import list_architectures
from saekit.models import load_model
from saekit.sources.cache import CacheSource, write_cache
from saekit.sources.hf import add_vector, collect_activations, splice, splice_sae
from saekit.sources.model import ModelSource
from saekit.sources.sites import resolve_sites
from saekit.sources.synthetic import SyntheticConfig, SyntheticSource
from saekit.sources.text import TextConfig, tokens_from_config
from saekit.sources.tensor import TensorSource, as_source
from saekit.training import TrainConfig, train
from saekit.types import ActBatch, ActivationSource, LossOut, Recovery, StepCtx

__all__ = [
    "ActBatch",
    "ActivationSource",
    "ArtifactError",
    "CacheSource",
    "ModelSource",
    "TextConfig",
    "add_vector",
    "collect_activations",
    "load_model",
    "resolve_sites",
    "splice",
    "splice_sae",
    "tokens_from_config",
    "write_cache",
    "ConfigError",
    "DataError",
    "LossOut",
    "Recovery",
    "SAE",
    "SAEConfig",
    "SaekitError",
    "StepCtx",
    "SyntheticConfig",
    "SyntheticSource",
    "TensorSource",
    "TrainConfig",
    "UnknownArchitectureError",
    "__version__",
    "as_source",
    "build_sae",
    "DownstreamMetrics",
    "downstream_metrics",
    "evaluate",
    "evaluate_on_model",
    "evaluate_suite",
    "write_suite_report",
    "feature_recovery",
    "is_sae_folder",
    "list_architectures",
    "load_sae",
    "load_suite",
    "save_sae",
    "save_suite",
    "train",
]
