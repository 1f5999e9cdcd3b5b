"""Run configs: reading the file, --set overrides, parsing, and [[sae]] tables against the data they train on."""

import dataclasses

import pytest
import torch

from saekit.cli.run_config import MAX_CONFIG_BYTES, apply_overrides, build_saes, parse_run_config, read_config_file
from saekit.errors import ArtifactError, ConfigError
from saekit.sae import get, list_architectures
from saekit.sources.synthetic import SyntheticSource
from saekit.sources.tensor import as_source
from tests.test_bounded import LAUGHS

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


TWO_SITES = as_source({"layers.3.mlp_in": torch.randn(64, 8), "layers.3.mlp_out": torch.randn(64, 6)})


def test_a_transcoder_table_names_the_site_it_writes_and_takes_its_width():
    table = {"architecture": "topk_transcoder", "d_sae": 16, "k": 2, "site": "layers.3.mlp_in", "site_out": "layers.3.mlp_out"}
    sae = build_saes([table], TWO_SITES).saes[0]
    assert (sae.site, sae.site_out, sae.d_in, sae.d_out) == ("layers.3.mlp_in", "layers.3.mlp_out", 8, 6)
    assert build_saes([{**table, "skip": True}], TWO_SITES).saes[0].W_skip.shape == (6, 8)
    one_site = build_saes([{"architecture": "relu_transcoder", "d_sae": 16}], NAMED).saes[0]
    assert (one_site.site, one_site.site_out, one_site.d_out) == ("synthetic", "synthetic", 8)


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ({"architecture": "topk", "k": 2, "site": "layers.3.mlp_in", "site_out": "layers.3.mlp_out"}, r"sae.0: site_out: a topk SAE reconstructs the site it reads"),
        ({"architecture": "topk_transcoder", "k": 2, "site": "layers.3.mlp_in"}, r"sae.0: site_out None is not one of the data's sites"),
        ({"architecture": "topk_transcoder", "k": 2, "site": "layers.3.mlp_in", "site_out": "layers.4.mlp_out"}, r"sae.0: site_out 'layers.4.mlp_out' is not one"),
        ({"architecture": "nope", "site": "layers.3.mlp_in", "site_out": "layers.3.mlp_out"}, r"sae.0: unknown architecture 'nope'"),
    ],
)
def test_a_bad_site_out_is_refused_naming_the_table(table, error):
    with pytest.raises(ConfigError, match=error):
        build_saes([{"d_sae": 16, **table}], TWO_SITES)


# ---------------------------------------------------------------------------------------------------
# Hostile config files and overrides: each a ConfigError naming the file or the key

BASE = {"data": {"kind": "synthetic", "d": 8}, "train": {"steps": 10}, "sae": [{"architecture": "topk", "d_sae": 16, "k": 2}]}


def parsed(overrides: list[str]):
    return parse_run_config(apply_overrides(BASE, overrides))


def test_a_billion_laughs_config_is_refused_before_expanding(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(LAUGHS)
    with pytest.raises(ConfigError, match=r"config file .*laughs.yaml is not valid YAML: aliases \(\*name\) are not allowed"):
        read_config_file(path)


@pytest.mark.parametrize("suffix, text", [(".json", "[" * 100_000 + "]" * 100_000), (".yaml", "[" * 100_000 + "]" * 100_000), (".toml", "a = " + "[" * 100_000 + "]" * 100_000)])
def test_deeply_nested_configs_are_refused(tmp_path, suffix, text):
    path = tmp_path / f"deep{suffix}"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"config file .*deep{suffix} nests .* deeper than 64 levels"):
        read_config_file(path)


def test_config_size_is_bounded(tmp_path):
    path = tmp_path / "big.toml"
    path.write_text("# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    with pytest.raises(ConfigError, match=r"big.toml is larger than 1,048,576 bytes"):
        read_config_file(path)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bin.toml", b"\xff\xfe a = 1", r"bin.toml is not UTF-8 text: byte 0 is b'\\xff'"),
        ("dup.json", b'{"train": {"steps": 1, "steps": 2}}', "dup.json: key 'steps' is given twice"),
        ("dup.yaml", b"out: a\nout: b\n", "dup.yaml: key 'out' is given twice"),
        ("keys.yaml", b"1: 2\n", "keys.yaml: key 1 at the top level is not a string"),
        ("list.json", b"[1, 2]", "list.json must hold a table of settings at the top level"),
        ("date.yaml", b"out: 2024-01-01\ndata: {kind: synthetic}\ntrain: {steps: 1}\nsae: {architecture: topk, d_sae: 4}\n", r"'out' must be the path of the output folder, got datetime.date"),
        ("data.toml", b'data = 5\ntrain = {steps = 1}\nsae = {architecture = "topk", d_sae = 4}\n', "'data' must be a table of data settings"),
    ],
)
def test_hostile_config_files_are_named(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        parse_run_config(read_config_file(path))


def test_a_config_path_that_is_no_file_is_named(tmp_path):
    (tmp_path / "folder.toml").mkdir()
    (tmp_path / "loop.toml").symlink_to(tmp_path / "loop.toml")
    with pytest.raises(ConfigError, match="config file .*folder.toml is a folder, not a file"):
        read_config_file(tmp_path / "folder.toml")
    with pytest.raises(ConfigError, match="config file .*loop.toml cannot be opened: Too many levels of symbolic links"):
        read_config_file(tmp_path / "loop.toml")


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.steps.x=1", r"--set 'train.steps.x=1': train.steps is 10, not a table; train.steps.x cannot be set"),
        ("out.x=1", "'out' must be the path of the output folder, got {'x': 1}"),
        ("train..steps=3", "expected KEY=VALUE with a dotted key"),
        (".x=3", "expected KEY=VALUE with a dotted key"),
        ("=3", "expected KEY=VALUE with a dotted key"),
        ("train.steps", "expected KEY=VALUE with a dotted key"),
        ("sae.0=5", r"--set 'sae.0=5': sae is a list; name a field of one entry"),
        ("sae.x.k=3", r"--set: sae.x does not exist \(there are 1 entries\)"),
        ("sae.7.k=3", r"--set: sae.7 does not exist"),
        ("data.kind=[", r"--set 'data.kind=\[': the value is not valid YAML"),
        ("data.kind=*a", "aliases .* are not allowed"),
        ("nosuch.key=1", "unknown top-level key 'nosuch'"),
        ("train.stepz=3", "train: unknown key 'stepz'"),
        ("train.steps=abc", "train.steps: expected an integer, got 'abc'"),
        ("train.steps=true", "train.steps: expected an integer, got True"),
        ("train.steps=-1", "train: steps must be positive, got -1"),
        ("train.batch_size=0", "train: batch_size must be positive, got 0"),
        ("train.seed=abc", "train.seed: expected an integer, got 'abc'"),
        ("train.seed=99999999999999999999999", "train.seed: 99999999999999999999999 is outside the 64-bit integer range"),
        ("train.grad_clip=.inf", "train.grad_clip: expected a finite number, got inf"),
        ("train.lr_decay_fraction=.nan", "train.lr_decay_fraction: expected a finite number, got nan"),
        ("train.device=tpu", "train.device: device 'tpu' is not one saekit runs on"),
        ("data=5", "'data' must be a table of data settings"),
        ("sae.0.seed=abc", "sae.0.seed: expected an integer, got 'abc'"),
        ("sae.0.seed=1.5", "sae.0.seed: expected an integer, got 1.5"),
        ("sae.0.name=../up", "sae.0.name: suite name '../up' must be letters"),
        ("sae.0.name=5", "sae.0.name: expected a string, got 5"),
        ("sae.0.architecture=[a]", r"sae.0.architecture: expected a string, got \['a'\]"),
        ("sae.0.init_from=5", "sae.0.init_from: expected a string, got 5"),
        ("sae.0.site={a: 1}", "sae.0.site: expected a string"),
    ],
)
def test_bad_overrides_and_values_are_named_by_key(override, message):
    with pytest.raises(ConfigError, match=message):
        parsed([override])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_a_cuda_device_this_machine_lacks_is_named_at_parse():
    with pytest.raises(ConfigError, match="train.device: device 'cuda:99' requested but CUDA is not available"):
        parsed(["train.device=cuda:99"])


def test_good_overrides_still_apply():
    rc = parsed(["train.steps=5", "sae.0.k=4", "sae.0.seed=3", "train.device=cpu", "out=runs/x"])
    assert (rc.train.steps, rc.saes[0]["k"], rc.saes[0]["seed"], str(rc.out)) == (5, 4, 3, "runs/x")


def test_an_init_from_folder_error_names_the_table(tmp_path):
    with pytest.raises(ArtifactError, match=r"sae.0: no SAE folder at .*nowhere"):
        build_saes([{"architecture": "topk", "init_from": str(tmp_path / "nowhere")}], NAMED)


def test_an_sae_larger_than_memory_is_refused_before_allocation():
    with pytest.raises(ConfigError, match=r"sae.0: a topk SAE of d_in=8, d_sae=1000000000000 needs 63,329.9 GiB, more than this machine's"):
        build_saes([{"architecture": "topk", "d_sae": 10**12, "k": 2}], NAMED)


@pytest.mark.parametrize("architecture", list_architectures())
def test_every_architecture_builds_from_a_table(architecture):
    hparams = {"k": 2} if "k" in {f.name for f in dataclasses.fields(get(architecture).config_class)} else {}
    built = build_saes([{"architecture": architecture, "d_sae": 16, **hparams}], NAMED)
    assert built.saes[0].W_enc.device.type == "cpu" and built.saes[0].d_sae == 16


def test_load_run_config_names_the_file_in_every_error(tmp_path):
    from saekit.cli.run_config import load_run_config

    path = tmp_path / "run.toml"
    path.write_text('[data]\nkind = "synthetic"\nd = 8\n[train]\n')
    with pytest.raises(ConfigError, match=rf"config file {path}: the config has no 'sae' section"):
        load_run_config(path)
    path.write_text('[data]\nkind = "synthetic"\nd = 8\n[train]\nsteps = 1\n[[sae]]\narchitecture = "relu"\nd_sae = 16\n')
    assert load_run_config(path).config.saes == [{"architecture": "relu", "d_sae": 16}]
    with pytest.raises(ConfigError, match=rf"config file {path} with its --set overrides: unknown top-level key 'extra'"):
        load_run_config(path, ["extra=1"])


CROSS_SITES = as_source({"a": torch.randn(64, 8), "b": torch.randn(64, 8), "wide": torch.randn(64, 6)})


def test_a_crosscoder_table_names_its_sites_and_takes_their_total_width():
    sae = build_saes([{"architecture": "batch_topk", "d_sae": 16, "k": 2, "sites": ["a", "b"]}], CROSS_SITES).saes[0]
    assert (sae.sites, sae.site, sae.d_in, sae.crosscoder) == (("a", "b"), None, 16, True)


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ({"architecture": "crosscoder", "sites": ["a", "b"], "site": "a"}, r"sae.0: give either site .* or sites"),
        ({"architecture": "crosscoder", "sites": ["a"]}, r"sae.0: sites must name two or more distinct sites"),
        ({"architecture": "crosscoder", "sites": ["a", "a"]}, r"sae.0: sites must name two or more distinct sites"),
        ({"architecture": "crosscoder", "sites": ["a", "c"]}, r"sae.0: sites \['c'\] are not among the data's sites"),
        ({"architecture": "topk_transcoder", "k": 2, "sites": ["a", "b"]}, r"sae.0: sites: a topk_transcoder transcoder of one output site reads one site"),
    ],
)
def test_bad_crosscoder_sites_are_refused_naming_the_table(table, error):
    with pytest.raises(ConfigError, match=error):
        build_saes([{"d_sae": 16, **table}], CROSS_SITES)


CLT_SITES = as_source({f"layers.{i}.{kind}": torch.randn(64, 8 if kind == "mlp_in" else 6) for i in range(2) for kind in ("mlp_in", "mlp_out")})
CLT_TABLE = {"architecture": "topk_clt", "d_sae": 16, "k": 4, "n_layers": 2,
             "sites": ["layers.0.mlp_in", "layers.1.mlp_in"], "sites_out": ["layers.0.mlp_out", "layers.1.mlp_out"]}  # fmt: skip


def test_a_cross_layer_transcoder_table_names_its_output_sites_and_takes_their_width():
    sae = build_saes([CLT_TABLE], CLT_SITES).saes[0]
    assert (sae.sites, sae.sites_out, sae.d_in, sae.d_out) == (("layers.0.mlp_in", "layers.1.mlp_in"), ("layers.0.mlp_out", "layers.1.mlp_out"), 16, 12)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"sites_out": None}, r"sae.0: sites: a topk_clt transcoder of one output site reads one site"),
        ({"site_out": "layers.0.mlp_out"}, r"sae.0: give either site_out .* or sites_out"),
        ({"sites_out": ["layers.0.mlp_out"]}, r"sae.0: sites_out must name two or more distinct sites"),
        ({"sites_out": ["layers.0.mlp_out", "layers.9.mlp_out"]}, r"sae.0: sites_out \['layers.9.mlp_out'\] are not among"),
        ({"architecture": "topk", "k": 2}, r"sae.0: sites_out: a topk SAE reconstructs the site it reads; only transcoders take a sites_out"),
    ],
)
def test_bad_cross_layer_transcoder_tables_are_refused_naming_the_table(change, error):
    table = {k: v for k, v in (CLT_TABLE | change).items() if v is not None}
    if change.get("architecture") == "topk":
        table.pop("n_layers")
    with pytest.raises(ConfigError, match=error):
        build_saes([table], CLT_SITES)
