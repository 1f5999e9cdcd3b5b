"""The TopK family's shared initialisation (saekit.sae.topk_family.init_parameters)."""

from __future__ import annotations

import math

import pytest
import torch

from saekit.errors import ConfigError
from saekit.sae import build

# Every architecture built by topk_family.init_parameters, with the settings it needs at this size.
FAMILY = {
    "topk": {"k": 2},
    "batch_topk": {"k": 2},
    "feature_choice": {"k": 2},
    "matryoshka_batch_topk": {"k": 2},
    "gradient_topk": {"k": 2},
    "topk_transcoder": {"k": 2, "d_out": 6},
    "batch_topk_transcoder": {"k": 2, "d_out": 6},
    "topk_clt": {"k": 2, "d_out": 6},
}


@pytest.mark.parametrize("name", FAMILY)
def test_encoder_columns_start_at_init_encoder_norm_and_decoder_rows_at_one(name: str) -> None:
    default = build(name, d_in=8, d_sae=16, seed=0, **FAMILY[name])
    assert default.cfg.init_encoder_norm == pytest.approx(1 / math.sqrt(3))
    for sae in (default, build(name, d_in=8, d_sae=16, seed=0, init_encoder_norm=0.25, **FAMILY[name])):
        norm = sae.cfg.init_encoder_norm
        assert torch.allclose(sae.W_enc.norm(dim=0), torch.full((16,), norm))
        assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(16))
        if not sae.transcoder:  # an SAE's encoder reads along its decoder's directions
            assert torch.allclose(sae.W_enc, norm * sae.W_dec.t())


@pytest.mark.parametrize("bad", [0.0, -0.5, float("inf"), float("nan")])
def test_a_bad_init_encoder_norm_is_refused_by_name(bad: float) -> None:
    with pytest.raises(ConfigError, match=r"init_encoder_norm(: expected a finite number| must be positive)"):
        build("topk", d_in=8, d_sae=16, k=2, init_encoder_norm=bad)
