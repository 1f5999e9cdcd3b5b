"""SAEBench's ``core`` eval: what splicing each SAE into its site costs the model (cross-entropy and KL
against zero-ablation), reconstruction quality, shrinkage, sparsity, latent densities and the weights'
cosine statistics, in SAEBench's JSON schema.

Every number comes from one pass of :func:`saekit.eval.evaluate.evaluate_on_model` over ``tokens``
(the SAEs of a site share its clean and ablated forward passes): its downstream metrics give SAEBench's
CE and KL groups, and its per-batch readouts feed :class:`~saekit.eval.bench.core_stats.CoreTotals`,
which applies SAEBench's own formulas where they differ from saekit's (listed there). The first
``skip_positions`` positions of every context are neither replaced nor scored nor counted: SAEBench's
documented runs likewise exclude the BOS token (``exclude_special_tokens_from_reconstruction``).

A transcoder is scored as :func:`~saekit.eval.evaluate.evaluate_on_model` scores it: its output
replaces its output site (``site_out``), computed from its input site in the same forward pass, and
every reconstruction statistic compares it with the output site's activations; its encoder-side
cosines (encoder-decoder, max encoder) compare vectors of different spaces and are None.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from saekit.errors import ConfigError
from saekit.eval.bench.core_stats import CoreTotals, weight_metrics
from saekit.eval.bench.sparse_probing import check_saes
from saekit.eval.evaluate import ReadoutBatch, evaluate_on_model
from saekit.models.load import LoadedModel
from saekit.sae.base import SAE

EVAL_TYPE = "core"


@dataclass(frozen=True)
class CoreConfig:
    batch_size_prompts: int = 16
    """Contexts per forward pass; SAEBench's per-batch statistics (explained variance, mse, relative
    reconstruction bias) are taken over the tokens of this many contexts."""
    skip_positions: int = 1
    """Leading positions of each context left clean, unscored and uncounted (1 = BOS)."""
    dataset: str = ""
    """The corpus the tokens come from, recorded in the JSON's eval_config."""

    def __post_init__(self) -> None:
        if self.batch_size_prompts < 1:
            raise ConfigError(f"batch_size_prompts must be positive, got {self.batch_size_prompts}")
        if self.skip_positions < 0:
            raise ConfigError(f"skip_positions must be >= 0, got {self.skip_positions}")


class _Collector:
    """SAEBench's running statistics of every SAE, fed by :func:`evaluate_on_model`'s readouts."""

    def __init__(self, saes: Mapping[str, SAE]) -> None:
        self.totals = {name: CoreTotals(sae.d_sae) for name, sae in saes.items()}

    def __call__(self, batch: ReadoutBatch) -> None:
        self.totals[batch.name].update(batch.target, batch.x_hat, batch.codes)


def core(
    saes: Mapping[str, SAE], model: LoadedModel, tokens: Tensor, config: CoreConfig | None = None, *, release: str | None = None
) -> dict[str, dict[str, Any]]:
    """SAEBench ``core`` output (a JSON-ready dict) of every SAE, by name, over the contexts ``tokens
    [n, T]`` (BOS first); ``release`` is recorded as the SAEs' ``sae_lens_release_id`` (a suite's name)."""
    from saekit.eval.bench.output import core_output

    cfg = config or CoreConfig()
    if not isinstance(model, LoadedModel):
        raise ConfigError("the core eval needs the model as saekit.load_model returns it")
    check_saes(saes, (1,))
    collector = _Collector(saes)
    results = evaluate_on_model(
        saes, model=model, tokens=tokens, skip_positions=cfg.skip_positions, context_batch_size=cfg.batch_size_prompts,
        progress=True, on_batch=collector,
    )  # fmt: skip
    batches = math.ceil(tokens.shape[0] / cfg.batch_size_prompts)
    return {
        name: core_output(
            name, sae, results[name], collector.totals[name].result(sae.d_out), weight_metrics(sae), cfg, model, release,
            tokens=(tokens.shape[0], tokens.shape[1]), batches=batches,
        )  # fmt: skip
        for name, sae in saes.items()
    }
