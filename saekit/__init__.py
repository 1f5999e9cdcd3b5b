"""saekit: sparse autoencoders on language-model activations, many at once.

    import saekit
    sae = saekit.build_sae("topk", d_in=576, d_sae=4608, k=32)
    sae = saekit.train(sae, "acts.npy", steps=2000, batch_size=4096).sae
    saekit.save_sae(sae, "my-sae")
    print(saekit.evaluate(saekit.load_sae("my-sae"), "acts.npy"))

The public API (everything else lives in the subpackages and may change):

Architectures
    ``SAE`` the contract every architecture fulfils; ``build_sae`` a fresh SAE by registry name;
    ``list_architectures`` the registered names.
Training
    ``train`` one SAE or several side by side on one stream; ``TrainConfig`` its settings;
    ``TrainResult`` what it returns.
Activation sources
    ``ActivationSource`` the protocol; ``as_source`` any tensor, array or file as one; ``TensorSource``,
    ``CacheSource`` (on disk, written by ``write_cache``), ``ModelSource`` (a model run with hooks),
    ``SyntheticSource`` with ``SyntheticConfig`` (planted features); ``TextConfig`` and
    ``tokens_from_config`` the token contexts a model reads.
Models and sites
    ``load_model`` a Hugging Face causal LM (the embedded SmolLM2 by default); ``resolve_sites`` site
    names from patterns; ``collect_activations`` the activations at sites; ``splice`` and ``splice_sae``
    replace a site's tensor while the model runs.
Evaluation
    ``evaluate`` reconstruction and sparsity on activations; ``evaluate_on_model`` with the spliced LM
    loss too; ``downstream_metrics`` the spliced loss alone; ``evaluate_suite`` a folder of SAEs;
    ``feature_recovery`` planted or reference directions found. SAEBench's k-sparse probing and
    feature absorption, in its JSON schema, live in `saekit.eval.bench`.
Saved SAEs
    ``save_sae`` / ``load_sae`` one SAE folder (SAELens's layout); ``save_suite`` / ``load_suite`` many.
Errors
    ``SaekitError`` the base of ``ConfigError`` (settings), ``DataError`` (inputs) and ``ArtifactError``
    (files on disk), and of ``saekit.errors.DivergedError`` (a training run that diverged).
"""

from saekit.errors import ArtifactError, ConfigError, DataError, SaekitError
from saekit.eval.downstream import downstream_metrics
from saekit.eval.evaluate import evaluate, evaluate_on_model
from saekit.eval.recovery import feature_recovery
from saekit.eval.suite import evaluate_suite
from saekit.io import load_sae, load_suite, save_sae, save_suite
from saekit.models import load_model
from saekit.sae import SAE
from saekit.sae.registry import build as build_sae
from saekit.sae.registry import list_architectures
from saekit.sources.cache import CacheSource, write_cache
from saekit.sources.hf import collect_activations, splice, splice_sae
from saekit.sources.model import ModelSource
from saekit.sources.sites import resolve_sites
from saekit.sources.synthetic import SyntheticConfig, SyntheticSource
from saekit.sources.tensor import TensorSource, as_source
from saekit.sources.text import TextConfig, tokens_from_config
from saekit.training import TrainConfig, TrainResult, train
from saekit.types import ActivationSource
from saekit.version import __version__

__all__ = [
    "ActivationSource",
    "ArtifactError",
    "CacheSource",
    "ConfigError",
    "DataError",
    "ModelSource",
    "SAE",
    "SaekitError",
    "SyntheticConfig",
    "SyntheticSource",
    "TensorSource",
    "TextConfig",
    "TrainConfig",
    "TrainResult",
    "__version__",
    "as_source",
    "build_sae",
    "collect_activations",
    "downstream_metrics",
    "evaluate",
    "evaluate_on_model",
    "evaluate_suite",
    "feature_recovery",
    "list_architectures",
    "load_model",
    "load_sae",
    "load_suite",
    "resolve_sites",
    "save_sae",
    "save_suite",
    "splice",
    "splice_sae",
    "tokens_from_config",
    "train",
    "write_cache",
]
