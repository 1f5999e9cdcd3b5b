"""Hook-based activation reading and splicing on tiny random models of every supported family."""

from __future__ import annotations

from contextlib import ExitStack

import pytest
import torch

transformers = pytest.importorskip("transformers")

from saekit.errors import ConfigError, DataError  # noqa: E402
from saekit.sae import build as build_sae  # noqa: E402
from saekit.sae.relu import ReLUConfig, ReLUSAE  # noqa: E402
from saekit.sources.hf import (  # noqa: E402
    add_vector,
    collect_activations,
    collect_activations_and_grads,
    next_token_loss,
    record,
    splice,
    splice_from,
    splice_sae,
    splice_transcoder,
)
from saekit.sources.sites import site_module  # noqa: E402
from tests.tolerance import assert_close_normwise  # noqa: E402

VOCAB, D, LAYERS = 64, 32, 3
DECODER = dict(vocab_size=VOCAB, hidden_size=D, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=4)
GQA = dict(DECODER, num_key_value_heads=2)

# family -> (config class, config arguments, path of the final norm applied before the LM head)
FAMILIES = {
    "llama": ("LlamaConfig", GQA, "model.norm"),
    "mistral": ("MistralConfig", GQA, "model.norm"),
    "qwen2": ("Qwen2Config", GQA, "model.norm"),
    "qwen3": ("Qwen3Config", dict(GQA, head_dim=8), "model.norm"),
    "gemma": ("GemmaConfig", dict(GQA, head_dim=8), "model.norm"),
    "gemma2": ("Gemma2Config", dict(GQA, head_dim=8), "model.norm"),
    "gemma3": ("Gemma3TextConfig", dict(GQA, head_dim=8), "model.norm"),
    "gpt2": (
        "GPT2Config",
        dict(vocab_size=VOCAB, n_embd=D, n_layer=LAYERS, n_head=4, bos_token_id=0, eos_token_id=0),
        "transformer.ln_f",
    ),
    "gpt_neox": ("GPTNeoXConfig", DECODER, "gpt_neox.final_layer_norm"),  # parallel residual
    "gpt_neox_sequential": ("GPTNeoXConfig", dict(DECODER, use_parallel_residual=False), "gpt_neox.final_layer_norm"),
}

ALL_SITES = ["layers.*.resid_pre", "layers.*.attn_out", "layers.*.mlp_out", "layers.*.resid_post"]


pytestmark = pytest.mark.usefixtures("one_thread")


def build(family: str) -> torch.nn.Module:
    config_class, kwargs, _ = FAMILIES[family]
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(**kwargs)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module]:
    return request.param, build(request.param)


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    return build("llama")


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(1))


def logits_of(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits


def hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def identity_sae(d: int) -> ReLUSAE:
    """relu(x) - relu(-x) == x exactly: a ReLU SAE that reconstructs every input without error."""
    sae = ReLUSAE(ReLUConfig(d_in=d, d_sae=2 * d))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


# --- reading -------------------------------------------------------------------------------------------


def test_residual_sites_match_hidden_states(family, tokens) -> None:
    name, model = family
    with torch.no_grad():
        hidden = model(tokens, output_hidden_states=True).hidden_states
    acts = collect_activations(model, tokens, ["layers.*.resid_pre", "layers.*.resid_post"])
    assert len(acts) == 2 * LAYERS and acts["layers.0.resid_pre"].shape == (2, 6, D)
    for i in range(LAYERS):
        torch.testing.assert_close(acts[f"layers.{i}.resid_pre"], hidden[i], rtol=0, atol=0)
    for i in range(LAYERS - 1):
        torch.testing.assert_close(acts[f"layers.{i}.resid_post"], hidden[i + 1], rtol=0, atol=0)
    # transformers replaces the last hidden state by the final norm's output; resid_post stays un-normed.
    final_norm = model.get_submodule(FAMILIES[name][2])
    last = acts[f"layers.{LAYERS - 1}.resid_post"]
    assert not torch.allclose(last, hidden[LAYERS])
    with torch.no_grad():
        torch.testing.assert_close(final_norm(last), hidden[LAYERS])


def test_sublayer_outputs_sum_to_the_block_output(family, tokens) -> None:
    _, model = family
    acts = collect_activations(model, tokens, ALL_SITES)
    for i in range(LAYERS):
        pre, attn, mlp = (acts[f"layers.{i}.{k}"] for k in ("resid_pre", "attn_out", "mlp_out"))
        assert attn.abs().max() > 0 and mlp.abs().max() > 0
        torch.testing.assert_close(pre + attn + mlp, acts[f"layers.{i}.resid_post"], rtol=1e-5, atol=1e-5)


def test_early_stop_gives_the_same_activations_and_skips_later_layers(family, tokens) -> None:
    _, model = family
    full = collect_activations(model, tokens, ALL_SITES)
    later_block, head = [], []
    handles = [site_module(model, "layers.1.resid_pre").module.register_forward_pre_hook(lambda *_: later_block.append(1))]
    handles.append(model.get_output_embeddings().register_forward_hook(lambda *_: head.append(1)))
    try:
        early = collect_activations(model, tokens, ["layers.0.mlp_out", "layers.0.resid_pre", "layers.0.resid_post"])
    finally:
        for handle in handles:
            handle.remove()
    assert later_block == [] and head == []
    for site, value in early.items():
        torch.testing.assert_close(value, full[site], rtol=0, atol=0)


def test_module_path_sites_read_the_module_output(llama, tokens) -> None:
    acts = collect_activations(llama, tokens, ["model.layers.1.mlp.down_proj", "model.layers.1.self_attn", *ALL_SITES])
    torch.testing.assert_close(acts["model.layers.1.mlp.down_proj"], acts["layers.1.mlp_out"], rtol=0, atol=0)
    # self_attn returns (output, weights): the first element is the site's tensor
    torch.testing.assert_close(acts["model.layers.1.self_attn"], acts["layers.1.attn_out"], rtol=0, atol=0)


def test_attention_mask_is_passed_to_the_model(llama) -> None:
    seq = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(2))
    padded = torch.cat([seq, seq], dim=0)
    mask = torch.ones_like(padded)
    mask[1, 4:] = 0  # right padding: the real tokens of row 1 must match the first 4 tokens run alone
    acts = collect_activations(llama, padded, "layers.2.resid_post", attention_mask=mask)["layers.2.resid_post"]
    alone = collect_activations(llama, seq[:, :4], "layers.2.resid_post")["layers.2.resid_post"]
    # Batches of different shapes: the same values up to the roundings of another summation order.
    assert_close_normwise(acts[1, :4], alone[0])
    assert_close_normwise(acts[0], collect_activations(llama, seq, "layers.2.resid_post")["layers.2.resid_post"][0])


def test_collecting_leaves_no_hooks_and_no_grad(llama, tokens) -> None:
    before = hook_count(llama)
    acts = collect_activations(llama, tokens, ALL_SITES)
    assert hook_count(llama) == before
    assert not any(a.requires_grad for a in acts.values())
    assert acts["layers.0.resid_post"].dtype == torch.float32


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.zeros(2, 6), "integer token ids"),
        (torch.zeros(6, dtype=torch.long), r"\[batch, positions\].*tokens\[None\]"),
        (torch.zeros(2, 0, dtype=torch.long), "non-empty"),
        (torch.full((2, 6), VOCAB), rf"\[0, {VOCAB}\), got values in \[{VOCAB}, {VOCAB}\]"),
    ],
)
def test_bad_tokens_raise_data_error(llama, bad, message) -> None:
    with pytest.raises(DataError, match=message):
        collect_activations(llama, bad, "layers.0.resid_post")


def test_mask_shape_and_bad_site_errors(llama, tokens) -> None:
    with pytest.raises(DataError, match="attention_mask shape"):
        collect_activations(llama, tokens, "layers.0.resid_post", attention_mask=torch.ones(2, 5))
    with pytest.raises(ConfigError, match="layer 3 is out of range"):
        collect_activations(llama, tokens, "layers.3.resid_post")


def test_a_module_that_never_runs_is_reported() -> None:
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=D, n_layer=1, n_head=4, add_cross_attention=True)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    before = hook_count(model)
    with pytest.raises(ConfigError, match=r"\['transformer.h.0.crossattention'\] were never computed"):
        collect_activations(model, torch.zeros(1, 3, dtype=torch.long), ["transformer.h.0.crossattention", "layers.0.mlp_out"])
    assert hook_count(model) == before


# --- gradients -----------------------------------------------------------------------------------------


def test_next_token_loss_matches_transformers(llama, tokens) -> None:
    with torch.no_grad():
        out = llama(tokens, labels=tokens)
    torch.testing.assert_close(next_token_loss(out.logits, tokens), out.loss)


def test_grads_are_those_of_an_ordinary_backward(tokens) -> None:
    model = build("llama").double()
    site = "layers.1.resid_post"
    kept: dict[str, torch.Tensor] = {}

    def keep(module, args, output) -> None:
        output.retain_grad()
        kept["h"] = output

    handle = site_module(model, site).module.register_forward_hook(keep)
    loss = next_token_loss(model(tokens).logits, tokens)
    loss.backward()
    handle.remove()
    model.zero_grad(set_to_none=True)

    for frozen in (True, False):  # frozen parameters: the activations still get their gradients
        model.requires_grad_(not frozen)
        out = collect_activations_and_grads(model, tokens, ["layers.0.attn_out", site])
        assert out.acts[site].shape == out.grads[site].shape == (2, 6, D)
        torch.testing.assert_close(out.grads[site], kept["h"].grad, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(out.loss, loss.detach())
        assert out.grads["layers.0.attn_out"].abs().max() > 0  # an earlier site gets its gradient too
        assert all(p.grad is None for p in model.parameters())

    # and a finite difference along one direction agrees (the RMSNorms compute in float32, hence eps)
    direction = torch.randn(2, 6, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    direction /= direction.norm()
    eps = 1e-3

    def loss_at(scale: float) -> float:
        with add_vector(model, site, direction, scale=scale), torch.no_grad():
            return float(next_token_loss(model(tokens).logits, tokens))

    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    analytic = float((out.grads[site] * direction).sum())
    assert abs(analytic) > 1e-3 and abs(numeric - analytic) < 1e-3 * abs(analytic)


def test_grads_need_two_positions(llama) -> None:
    with pytest.raises(DataError, match="at least 2 positions"):
        collect_activations_and_grads(llama, torch.zeros(2, 1, dtype=torch.long), "layers.0.resid_post")


# --- splicing ------------------------------------------------------------------------------------------


def test_identity_and_exact_reconstruction_splices_keep_logits(family, tokens) -> None:
    _, model = family
    original = logits_of(model, tokens)
    sae = identity_sae(D)
    kinds = ("resid_pre", "attn_out", "mlp_out", "resid_post")
    with ExitStack() as stack:
        for kind in kinds:
            stack.enter_context(splice(model, f"layers.1.{kind}", lambda h: h))
        torch.testing.assert_close(logits_of(model, tokens), original, rtol=0, atol=0)
    with ExitStack() as stack:
        for kind in kinds:
            stack.enter_context(splice_sae(model, f"layers.1.{kind}", sae))
        torch.testing.assert_close(logits_of(model, tokens), original, rtol=0, atol=0)


def test_zero_splice_changes_logits_until_the_block_ends(family, tokens) -> None:
    _, model = family
    original, before = logits_of(model, tokens), hook_count(model)
    with splice(model, "layers.1.resid_post", torch.zeros_like):
        assert not torch.allclose(logits_of(model, tokens), original)
        assert collect_activations(model, tokens, "layers.1.resid_post")["layers.1.resid_post"].abs().max() == 0
    assert hook_count(model) == before
    torch.testing.assert_close(logits_of(model, tokens), original, rtol=0, atol=0)


def test_add_vector_shifts_the_site_by_exactly_the_vector(llama, tokens) -> None:
    original = collect_activations(llama, tokens, ALL_SITES)
    vector = torch.randn(D, generator=torch.Generator().manual_seed(4))
    with add_vector(llama, "layers.1.resid_post", vector, scale=2.0):
        steered = collect_activations(llama, tokens, ALL_SITES)
        with torch.no_grad():  # transformers' own hidden-state capture also sees the replacement
            hidden = llama(tokens, output_hidden_states=True).hidden_states
    torch.testing.assert_close(steered["layers.1.resid_post"], original["layers.1.resid_post"] + 2.0 * vector)
    torch.testing.assert_close(steered["layers.2.resid_pre"], steered["layers.1.resid_post"], rtol=0, atol=0)
    torch.testing.assert_close(hidden[2], steered["layers.1.resid_post"], rtol=0, atol=0)
    torch.testing.assert_close(steered["layers.1.mlp_out"], original["layers.1.mlp_out"], rtol=0, atol=0)
    assert not torch.allclose(steered["layers.2.resid_post"], original["layers.2.resid_post"])


def test_attn_out_splice_replaces_only_the_attention_contribution(llama, tokens) -> None:
    original = collect_activations(llama, tokens, ALL_SITES)
    with splice(llama, "layers.1.attn_out", torch.zeros_like):
        spliced = collect_activations(llama, tokens, ALL_SITES)
    assert spliced["layers.1.attn_out"].abs().max() == 0
    torch.testing.assert_close(spliced["layers.1.resid_pre"], original["layers.1.resid_pre"], rtol=0, atol=0)
    torch.testing.assert_close(
        spliced["layers.1.resid_post"], spliced["layers.1.resid_pre"] + spliced["layers.1.mlp_out"], rtol=1e-5, atol=1e-5
    )


def test_resid_pre_splice_replaces_the_block_input(llama, tokens) -> None:
    vector = torch.randn(D, generator=torch.Generator().manual_seed(5))
    original = collect_activations(llama, tokens, ["layers.0.resid_post", "layers.1.resid_pre"])
    with add_vector(llama, "layers.1.resid_pre", vector):
        steered = collect_activations(llama, tokens, ["layers.0.resid_post", "layers.1.resid_pre"])
    torch.testing.assert_close(steered["layers.0.resid_post"], original["layers.0.resid_post"], rtol=0, atol=0)
    torch.testing.assert_close(steered["layers.1.resid_pre"], original["layers.1.resid_pre"] + vector)


def test_splices_nest_and_combine(llama, tokens) -> None:
    site = "layers.1.mlp_out"
    original = collect_activations(llama, tokens, ALL_SITES)
    vector = torch.randn(D, generator=torch.Generator().manual_seed(6))
    with add_vector(llama, "layers.0.mlp_out", vector):
        base = collect_activations(llama, tokens, ALL_SITES)
        with add_vector(llama, site, vector), splice(llama, site, lambda h: 2 * h):
            both = collect_activations(llama, tokens, ALL_SITES)
    torch.testing.assert_close(both["layers.0.mlp_out"], original["layers.0.mlp_out"] + vector)
    # on one site the inner splice runs first and the outer one sees its result: 2h + v, not 2(h + v)
    torch.testing.assert_close(both[site], 2 * base[site] + vector)
    after = collect_activations(llama, tokens, ALL_SITES)
    for name, value in after.items():
        torch.testing.assert_close(value, original[name], rtol=0, atol=0)


def test_splice_from_a_position_keeps_the_earlier_ones_and_passes_gradients(llama, tokens) -> None:
    site, start = "layers.0.resid_post", 2
    original = collect_activations(llama, tokens, [site])[site]
    scale = torch.tensor(3.0, requires_grad=True)
    seen = {}
    with splice(llama, site, lambda kept: kept * scale, start=start), record(llama, [site], seen):
        llama(tokens).logits.sum().backward()
    torch.testing.assert_close(seen[site][:, :start], original[:, :start], rtol=0, atol=0)
    torch.testing.assert_close(seen[site][:, start:], 3 * original[:, start:])
    assert scale.grad is not None and scale.grad != 0
    llama.zero_grad(set_to_none=True)  # the module-scoped model is shared
    with pytest.raises(DataError, match=r"must return a tensor of shape \(2, 4, 32\)"):
        with splice(llama, site, lambda kept: kept[:, 1:], start=start):
            logits_of(llama, tokens)


def test_splice_errors_and_cleanup(llama, tokens) -> None:
    before = hook_count(llama)
    with pytest.raises(DataError, match=r"must return a tensor of shape \(2, 6, 32\), got \(2, 6\)"):
        with splice(llama, "layers.0.mlp_out", lambda h: h[..., 0]):
            logits_of(llama, tokens)
    with pytest.raises(DataError, match="d_in=8 cannot splice 'layers.0.mlp_out', whose width is 32"):
        with splice_sae(llama, "layers.0.mlp_out", identity_sae(8)):
            logits_of(llama, tokens)
    with pytest.raises(DataError, match=r"steering vector of shape \(31,\)"):
        with add_vector(llama, "layers.0.mlp_out", torch.zeros(31)):
            logits_of(llama, tokens)
    with pytest.raises(ConfigError, match="unknown site"):
        with splice(llama, "layers.0.mlp", lambda h: h):
            pass
    assert hook_count(llama) == before


# --- transcoders: one site computed from another in the same pass ------------------------------------


def test_mlp_out_recomputed_from_mlp_in_in_the_same_pass_keeps_the_logits(family, tokens) -> None:
    """Every family: replacing mlp_out by the block's own MLP (and the norm or dropout after it) applied
    to mlp_in of the same pass changes nothing, so splice_from reads the input the MLP really read."""
    name, model = family
    mlp, after = site_module(model, "layers.1.mlp_in").module, site_module(model, "layers.1.mlp_out").module

    def own_mlp(x: torch.Tensor) -> torch.Tensor:  # .forward: the hooks on these modules must not run again
        out = mlp.forward(x)
        return out if after is mlp else after.forward(out)

    clean = logits_of(model, tokens)
    with splice_from(model, "layers.1.mlp_in", "layers.1.mlp_out", own_mlp):
        torch.testing.assert_close(logits_of(model, tokens), clean, rtol=1e-5, atol=1e-5)
    with splice_from(model, "layers.1.mlp_in", "layers.1.mlp_out", lambda x: own_mlp(x) + x):  # not a constant: norms remove those
        assert not torch.allclose(logits_of(model, tokens), clean, atol=1e-3)


def test_splice_transcoder_writes_its_output_site_from_its_input_site(llama, tokens) -> None:
    """A skip transcoder spliced in equals splicing, at mlp_out, its output on the clean mlp_in (which
    mlp_out does not change), from a given position on."""
    sae = build_sae("relu_transcoder", d_in=D, d_sae=48, skip=True, seed=0)
    with torch.no_grad():
        sae.W_skip.normal_(generator=torch.Generator().manual_seed(2))
    sae.metadata.update(site="layers.1.mlp_in", site_out="layers.1.mlp_out")
    x = collect_activations(llama, tokens, ["layers.1.mlp_in"])["layers.1.mlp_in"]
    with torch.no_grad(), splice(llama, "layers.1.mlp_out", lambda h: sae(x[:, 2:]), start=2):
        expected = logits_of(llama, tokens)
    before = hook_count(llama)
    with splice_transcoder(llama, sae, start=2):
        torch.testing.assert_close(logits_of(llama, tokens), expected)
    assert not torch.allclose(expected, logits_of(llama, tokens), atol=1e-3)
    assert hook_count(llama) == before
    with pytest.raises(DataError, match="splice it with splice_transcoder"):
        splice_sae(llama, "layers.1.mlp_out", sae)


def test_splice_from_a_later_site_is_refused(llama, tokens) -> None:
    with pytest.raises(ConfigError, match=r"reads 'layers.1.mlp_in', which the forward pass has not computed by then"):
        with splice_from(llama, "layers.1.mlp_in", "layers.0.mlp_out", lambda x: x):
            logits_of(llama, tokens)
