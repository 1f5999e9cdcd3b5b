"""Site names -> modules, glob expansion and error messages, on tiny random models of real families."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from saekit.errors import ConfigError  # noqa: E402
from saekit.sources.sites import (  # noqa: E402
    FAMILIES,
    available_sites,
    family_of,
    layer_of,
    n_layers,
    resolve_sites,
    site_module,
)

SIZES = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=1)


pytestmark = pytest.mark.usefixtures("one_thread")


def _build(config_class: str, model_class: str = "AutoModelForCausalLM", **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(**kwargs)
    return getattr(transformers, model_class).from_config(config).eval()


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    return _build("LlamaConfig", num_hidden_layers=12, **SIZES)


# family -> (model builder arguments, expected module paths of layer 1's attn_out and mlp_out)
LAYOUTS = {
    "llama": (("LlamaConfig",), dict(SIZES), "model.layers.1.self_attn", "model.layers.1.mlp"),
    "gemma2": (
        ("Gemma2Config",),
        dict(SIZES, head_dim=8),
        "model.layers.1.post_attention_layernorm",
        "model.layers.1.post_feedforward_layernorm",
    ),
    "gpt2": (("GPT2Config",), dict(vocab_size=64, n_embd=16, n_head=2, bos_token_id=0, eos_token_id=0), "transformer.h.1.attn", "transformer.h.1.mlp"),
    "gpt_neox": (
        ("GPTNeoXConfig",),
        dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_attention_heads=2),
        "gpt_neox.layers.1.post_attention_dropout",
        "gpt_neox.layers.1.post_mlp_dropout",
    ),
}


@pytest.mark.parametrize("family", sorted(LAYOUTS))
def test_sites_map_to_the_family_modules(family: str) -> None:
    (config_class,), kwargs, attn_path, mlp_path = LAYOUTS[family]
    layers = "n_layer" if family == "gpt2" else "num_hidden_layers"
    model = _build(config_class, **kwargs, **{layers: 2})
    assert family_of(model).name == family
    assert site_module(model, "layers.1.attn_out").path == attn_path
    assert site_module(model, "layers.1.mlp_out").path == mlp_path
    block = attn_path.rsplit(".", 1)[0]
    pre, post = site_module(model, "layers.1.resid_pre"), site_module(model, "layers.1.resid_post")
    assert (pre.path, pre.reads_input) == (block, True)
    assert (post.path, post.reads_input) == (block, False)
    assert pre.module is post.module is model.get_submodule(block)
    assert n_layers(model) == 2


# family -> the pre-MLP norm of layer 1, whose output is what the MLP reads
PRE_MLP_NORMS = {
    "llama": "model.layers.1.post_attention_layernorm",
    "gemma2": "model.layers.1.pre_feedforward_layernorm",
    "gpt2": "transformer.h.1.ln_2",
    "gpt_neox": "gpt_neox.layers.1.post_attention_layernorm",
}


@pytest.mark.parametrize("family", sorted(LAYOUTS))
def test_mlp_in_is_what_the_mlp_reads_and_mlp_out_is_computed_from_it(family: str) -> None:
    """mlp_in is the input of the family's MLP module: the pre-MLP norm's output; the MLP (and, where the
    family has one, the norm or dropout after it) maps it to mlp_out, so a transcoder from mlp_in to
    mlp_out stands in for exactly that computation."""
    from saekit.sources.hf import collect_activations

    (config_class,), kwargs, _, mlp_path = LAYOUTS[family]
    model = _build(config_class, **kwargs, **{"n_layer" if family == "gpt2" else "num_hidden_layers": 2})
    hook = site_module(model, "layers.1.mlp_in")
    block = mlp_path.rsplit(".", 1)[0]
    assert (hook.path, hook.reads_input) == (f"{block}.mlp", True)
    tokens = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    acts = collect_activations(model, tokens, ["layers.1.mlp_in", "layers.1.mlp_out", PRE_MLP_NORMS[family]])
    assert torch.equal(acts["layers.1.mlp_in"], acts[PRE_MLP_NORMS[family]])
    with torch.no_grad():
        out = model.get_submodule(f"{block}.mlp")(acts["layers.1.mlp_in"])
        if mlp_path != f"{block}.mlp":
            out = model.get_submodule(mlp_path)(out)
    torch.testing.assert_close(out, acts["layers.1.mlp_out"])
    assert resolve_sites(model, "layers.*.mlp_in") == ["layers.0.mlp_in", "layers.1.mlp_in"]


def test_family_table_has_no_model_type_twice() -> None:
    types = [t for family in FAMILIES for t in family.model_types]
    assert len(types) == len(set(types))


def test_base_model_without_lm_head_is_supported() -> None:
    model = _build("LlamaConfig", "AutoModel", num_hidden_layers=2, **SIZES)
    assert site_module(model, "layers.0.mlp_out").path == "layers.0.mlp"
    assert site_module(model, "layers.1.resid_post").module is model.layers[1]


def test_glob_range_dedupe_and_order(llama: torch.nn.Module) -> None:
    got = resolve_sites(llama, ["layers.10.mlp_out", "layers.*.resid_post", "layers.{1..2}.attn_out", "layers.2.resid_post"])
    expected_posts = [f"layers.{i}.resid_post" for i in range(12)]
    assert [s for s in got if s.endswith("resid_post")] == expected_posts  # numeric, not lexical, order
    assert got[:5] == ["layers.0.resid_post", "layers.1.attn_out", "layers.1.resid_post", "layers.2.attn_out", "layers.2.resid_post"]
    assert got.index("layers.10.mlp_out") == got.index("layers.10.resid_post") - 1  # computed first in a block
    assert len(got) == len(set(got)) == 12 + 2 + 1
    assert resolve_sites(llama, "layers.3.resid_pre") == ["layers.3.resid_pre"]


def test_module_paths_are_sites_and_follow_canonical_names(llama: torch.nn.Module) -> None:
    got = resolve_sites(llama, ["model.layers.3.mlp.down_proj", "layers.0.resid_pre", "model.layers.3.mlp.down_proj"])
    assert got == ["layers.0.resid_pre", "model.layers.3.mlp.down_proj"]
    hook = site_module(llama, "model.layers.3.mlp.down_proj")
    assert hook.module is llama.model.layers[3].mlp.down_proj and not hook.reads_input
    assert layer_of("model.layers.3.mlp.down_proj") is None


def test_layer_of_and_available_sites(llama: torch.nn.Module) -> None:
    assert layer_of("layers.11.attn_out") == 11
    assert layer_of("layers.*.attn_out") is None
    sites = available_sites(llama)
    assert len(sites) == 12 * 5
    assert sites[:5] == ["layers.0.resid_pre", "layers.0.attn_out", "layers.0.mlp_in", "layers.0.mlp_out", "layers.0.resid_post"]


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("layers.12.resid_post", r"'layers.12.resid_post': layer 12 is out of range; the model has 12 layers \(0..11\)"),
        ("layers.{3..12}.mlp_out", r"layer 12 is out of range"),
        ("layers.{4..3}.mlp_out", r"empty layer range"),
        ("layers.x.mlp_out", r"the layer must be a number"),
        ("layers.0.mlp_mid", r"unknown site 'layers.0.mlp_mid': unknown site kind 'mlp_mid'.*resid_pre,attn_out,mlp_in,mlp_out,resid_post.*0..11"),
        ("model.layers.3.mlpp", r"unknown site 'model.layers.3.mlpp'.*module path such as model.layers.0.mlp"),
        ("", r"unknown site ''"),
    ],
)
def test_bad_sites_raise_config_error_naming_them(llama: torch.nn.Module, pattern: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_sites(llama, [pattern])


def test_site_module_takes_one_site_not_a_pattern(llama: torch.nn.Module) -> None:
    with pytest.raises(ConfigError, match="no single layer"):
        site_module(llama, "layers.*.resid_post")


def test_unknown_family_has_residual_sites_only() -> None:
    # OLMo 2 norms its sublayer outputs like Gemma 2 but has no pre-norms: guessing its sublayer sites from
    # a Llama-like module layout would be wrong, so only the block input and output are offered.
    model = _build("Olmo2Config", num_hidden_layers=2, pad_token_id=0, bos_token_id=1, eos_token_id=2, **SIZES)
    assert family_of(model) is None
    assert resolve_sites(model, "layers.*.resid_pre") == ["layers.0.resid_pre", "layers.1.resid_pre"]
    assert available_sites(model) == ["layers.0.resid_pre", "layers.0.resid_post", "layers.1.resid_pre", "layers.1.resid_post"]
    with pytest.raises(ConfigError, match=r"attn_out lives is unknown for model_type 'olmo2'.*model.layers.0.mlp"):
        resolve_sites(model, "layers.*.attn_out")
    assert resolve_sites(model, "model.layers.0.post_attention_layernorm") == ["model.layers.0.post_attention_layernorm"]


def test_model_without_known_blocks_names_the_candidates() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ConfigError, match="cannot find the transformer blocks of Sequential"):
        resolve_sites(model, "layers.0.resid_post")
    assert resolve_sites(model, "0") == ["0"]
