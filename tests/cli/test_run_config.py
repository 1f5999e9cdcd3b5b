"""[[sae]] tables against the data they train on."""

import pytest
import torch

from saekit.cli.run_config import build_saes
from saekit.errors import ConfigError
from saekit.sources.synthetic import SyntheticSource
from saekit.sources.tensor import as_source

NAMED = SyntheticSource(d=8, n_features=16, seed=0)  # one site, named "synthetic"


def test_a_site_the_data_does_not_provide_is_refused():
    with pytest.raises(ConfigError, match=r"sae.0: site 'layers.9.resid_post' is not one of the data's sites \['synthetic'\]"):
        build_saes([{"architecture": "topk", "d_sae": 16, "k": 2, "site": "layers.9.resid_post"}], NAMED)


def test_the_data_site_or_none_is_taken_and_an_anonymous_tensor_keeps_the_sae_claim():
    built = build_saes([{"architecture": "topk", "d_sae": 16, "k": 2}, {"architecture": "relu", "d_sae": 16, "site": "synthetic"}], NAMED)
    assert [sae.site for sae in built.saes] == ["synthetic", "synthetic"]
    anonymous = as_source(torch.randn(64, 8))
    claimed = build_saes([{"architecture": "topk", "d_sae": 16, "k": 2, "site": "layers.3.resid_post"}], anonymous)
    assert claimed.saes[0].site == "layers.3.resid_post"
