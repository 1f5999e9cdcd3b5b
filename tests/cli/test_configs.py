"""Every example config in configs/ is valid: it parses strictly, its SAEs build, and its data
table is one that the source factory accepts."""

from pathlib import Path

import pytest

from saekit.cli.run_config import parse_run_config, read_config_file
from saekit.sae.registry import build
from saekit.sources.spec import SOURCE_KINDS, split_model_settings

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_config_is_valid(path):
    rc = parse_run_config(read_config_file(path))
    data = dict(rc.data)
    kind = data.pop("kind")
    assert kind in SOURCE_KINDS
    if kind == "model":
        split_model_settings(data)
        d_in = 576
    else:
        assert kind == "synthetic"
        d_in = data.get("d", 64)
    for spec in rc.saes:
        spec = {k: v for k, v in spec.items() if k not in ("name", "site", "site_out", "seed")}
        build(spec.pop("architecture"), d_in=d_in, **spec)


def test_there_are_example_configs():
    assert len(CONFIGS) >= 2
