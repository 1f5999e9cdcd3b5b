"""Every example config in configs/ is valid: it parses strictly, its SAEs build, and its data
table is one that the source factory accepts. A config with a [track] or [study] table is read as its
command reads it (the models it names are trained by `saekit games othello-model`, so they are not
looked for here)."""

from pathlib import Path

import pytest

from saekit.boardgames.study import StudyConfig
from saekit.cli.run_config import parse_run_config, parse_with_models_table, read_config_file
from saekit.sae.registry import build
from saekit.sources.spec import SOURCE_KINDS, split_model_settings
from saekit.track.config import TrackConfig

MODELS_TABLES = {"track": TrackConfig, "study": StudyConfig}

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_config_is_valid(path):
    raw = read_config_file(path)
    table = next((key for key in MODELS_TABLES if key in raw), None)
    if table is None:
        rc = parse_run_config(raw)
    else:
        _, rc = parse_with_models_table(raw, table, MODELS_TABLES[table], "", ("model", "games"))
    data = dict(rc.data)
    kind = data.pop("kind")
    assert kind in SOURCE_KINDS
    if kind == "models":  # several models on the same contexts: the keys of kind "model" or "games"
        assert isinstance(data.pop("models"), dict)
        kind = "games" if data.pop("contexts", "text") == "games" else "model"
    if kind == "model":
        split_model_settings(data)
        d_in = 576
    elif kind == "games":
        d_in = 128  # the Othello-GPT's width
    else:
        assert kind == "synthetic"
        d_in = data.get("d", 64)
    for spec in rc.saes:
        width = d_in * len(spec.get("sites", [None]))  # a crosscoder reads its sites side by side
        if "sites_out" in spec:  # a cross-layer transcoder writes its output sites side by side
            spec["d_out"] = d_in * len(spec["sites_out"])
        spec = {k: v for k, v in spec.items() if k not in ("name", "site", "site_out", "sites", "sites_out", "seed")}
        build(spec.pop("architecture"), d_in=width, **spec)


def test_there_are_example_configs():
    assert len(CONFIGS) >= 2
