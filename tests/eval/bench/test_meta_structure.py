"""The meta-structure eval: near 0 for an orthonormal dictionary (at most the meta-SAE's width in
directions), near 1 for one built from a few shared directions; seeds, schema and bad inputs."""

import pytest
import torch

from saekit.errors import ConfigError, DataError
from saekit.eval.bench.meta_structure import MetaStructureConfig, batch_reconstruction, meta_structure, meta_width, unit_rows
from saekit.eval.bench.output import TOP_LEVEL_KEYS
from saekit.sae import build

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"train_steps": 150, "train_batch_size": 64, "learning_rate": 5e-3, "device": "cpu", "seeds": 2}
"""Few steps at a larger learning rate than SAEBench's 5e-4, enough for 64 or 128 rows of 32 dimensions."""
KEY = "decoder_fraction_variance_explained"


def with_decoder(rows: torch.Tensor):
    sae = build("relu", d_in=rows.shape[1], d_sae=rows.shape[0], seed=0)
    with torch.no_grad():
        sae.W_dec.copy_(rows)
    return sae


def orthonormal(n: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(0)))[0]


def shared(n: int, d: int, directions: int = 6) -> torch.Tensor:
    """``n`` rows, each a positive combination of two of a few shared directions, plus a little noise."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(directions, d, generator=g)
    picks = torch.stack([torch.randperm(directions, generator=g)[:2] for _ in range(n)])
    rows = ((torch.rand(n, 2, 1, generator=g) + 0.5) * base[picks]).sum(1)
    return rows * (torch.rand(n, 1, generator=g) + 0.5) + 0.01 * torch.randn(n, d, generator=g)


def test_an_orthonormal_dictionary_scores_near_zero():
    # 64 orthonormal rows; 4 meta-latents span at most 4 of their 64 directions: at most 4/63 of the variance
    doc = meta_structure({"orth": with_decoder(orthonormal(64))}, MetaStructureConfig(width_ratio=1 / 16, **FAST))["orth"]
    assert 0 <= doc["eval_result_metrics"]["meta_structure"][KEY] <= 4 / 63 + 1e-3


def test_a_dictionary_of_few_shared_directions_scores_high_with_its_spread_over_seeds():
    doc = meta_structure({"shared": with_decoder(shared(128, 32))}, MetaStructureConfig(**FAST))["shared"]
    assert doc["eval_result_metrics"]["meta_structure"][KEY] > 0.9
    assert tuple(doc) == TOP_LEVEL_KEYS and doc["eval_type_id"] == "meta_structure_decoder_variance"
    assert set(doc["eval_result_metrics"]["meta_structure"]) == {KEY, "train_time_seconds", "final_reconstruction_mse"}
    extra = doc["eval_result_unstructured"]
    assert extra["seeds"] == [42, 43] and len(extra["metrics_per_seed"][KEY]) == 2 and extra["metrics_std"][KEY] is not None
    assert extra["meta_width"] == 32 and doc["eval_config"]["width_ratio"] == 0.25 and doc["eval_config"]["k"] == 4
    assert extra["metrics_per_seed"][KEY][0] != extra["metrics_per_seed"][KEY][1]  # each seed its own meta-SAE


def test_the_decoder_rows_are_read_at_unit_norm():
    rows = shared(40, 8)
    got = unit_rows(with_decoder(rows), "s")
    assert got.norm(dim=1).tolist() == pytest.approx([1.0] * 40)
    assert torch.allclose(got * rows.norm(dim=1, keepdim=True), rows, atol=1e-6)


def test_the_metric_uses_the_training_selection_over_each_eval_batch():
    meta = build("batch_topk", d_in=4, d_sae=4, k=1, seed=0)
    with torch.no_grad():
        meta.W_enc.copy_(torch.eye(4))
        meta.W_dec.copy_(torch.eye(4))
        meta.b_enc.zero_()
        meta.b_dec.zero_()
    rows = torch.tensor([[3.0, 1.0, 0, 0], [0, 0, 2.0, 0]])
    # one batch of both rows keeps the 2 largest pre-activations (3 and 2); rows one at a time keep each row's largest
    assert batch_reconstruction(meta, rows, 2).tolist() == [[3.0, 0, 0, 0], [0, 0, 2.0, 0]]
    assert meta.encode(rows).abs().sum() == 0  # the inference threshold is not set: encode would give nothing


def test_bad_settings_and_dictionaries_are_named():
    for field, value, message in (
        ("width_ratio", 0.0, "width_ratio must be in (0, 1], got 0.0"),
        ("seeds", 0, "seeds must be positive, got 0"),
        ("train_steps", 0, "train_steps must be positive, got 0"),
        ("learning_rate", -1.0, "learning_rate must be positive, got -1.0"),
    ):
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
            MetaStructureConfig(**{field: value})
    rows = orthonormal(16)
    rows[3] = 0
    with pytest.raises(DataError, match=r"SAE 'z': 1 decoder row\(s\) \(first: latent 3\) are zero or not finite"):
        meta_structure({"z": with_decoder(rows)}, MetaStructureConfig(**FAST))
    assert meta_width(4, MetaStructureConfig()) == 4
    with pytest.raises(ConfigError, match="SAE 'tiny' has d_sae=4: a meta-SAE of 4 latents"):
        meta_structure({"tiny": with_decoder(orthonormal(4))}, MetaStructureConfig(**FAST))
    with pytest.raises(ConfigError, match="a benchmark needs at least one SAE"):
        meta_structure({})
