"""Evaluating a crosscoder: activation metrics side by side and per site against hand computation,
and the downstream metrics of replacing every one of its sites at once against plain forward hooks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from saekit.errors import DataError
from saekit.eval.evaluate import evaluate, evaluate_on_model
from saekit.sae import build
from tests.tiny_lm import tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")

SITES = ["layers.0.resid_post", "layers.1.resid_post"]
SKIP = 1


def _fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    x, x_hat = x.double(), x_hat.double()
    return float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def test_activation_metrics_side_by_side_and_per_site_by_hand() -> None:
    torch.manual_seed(0)
    data = {"a": torch.randn(300, 4) * 5, "b": torch.randn(300, 4) * 0.1 + 1.0}
    sae = build("crosscoder", d_in=8, d_sae=12, seed=0)
    sae.metadata["sites"] = ["a", "b"]
    result = evaluate(sae, data, batch_size=64)
    x = torch.cat([data["a"], data["b"]], -1)
    with torch.no_grad():
        codes = sae.encode(x)
        x_hat = sae(x)
    assert result["sites"] == ["a", "b"]
    assert result["fvu"] == pytest.approx(_fvu(x, x_hat), rel=1e-9)
    assert result["fvu_by_site"]["a"] == pytest.approx(_fvu(x[:, :4], x_hat[:, :4]), rel=1e-9)
    assert result["fvu_by_site"]["b"] == pytest.approx(_fvu(x[:, 4:], x_hat[:, 4:]), rel=1e-9)
    assert result["l0"] == pytest.approx(float((codes != 0).sum(-1).double().mean()), rel=1e-12)
    assert result["tokens"] == 300


def test_sites_missing_from_the_activations_are_named() -> None:
    sae = build("crosscoder", d_in=8, d_sae=4)
    sae.metadata["sites"] = ["a", "c"]
    with pytest.raises(DataError, match=r"\['c'\] missing"):
        evaluate(sae, {"a": torch.randn(10, 4), "b": torch.randn(10, 4)})


def _exact_crosscoder(d: int):
    """relu(x) − relu(−x) = x over both sites: a crosscoder that reconstructs exactly."""
    sae = build("crosscoder", d_in=2 * d, d_sae=4 * d, seed=0)
    eye = torch.eye(2 * d, dtype=torch.float64)
    sae.double()
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae.metadata["sites"] = SITES
    return sae


def _run_with(model, tokens, replace):
    """Logits with positions >= SKIP of both layers' outputs replaced by replace[layer] (plain hooks)."""

    def hook_for(layer: int):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            new = hidden.clone()
            new[:, SKIP:] = replace[layer].to(new)
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    handles = [model.model.layers[i].register_forward_hook(hook_for(i)) for i in range(2)]
    try:
        with torch.no_grad():
            return model(tokens).logits
    finally:
        for h in handles:
            h.remove()


def _ce(logits, tokens):
    return float(F.cross_entropy(logits[:, SKIP:-1].flatten(0, 1).double(), tokens[:, SKIP + 1 :].flatten()))


def test_downstream_metrics_replace_every_site_at_once() -> None:
    model = tiny_llama().double().eval()
    tokens = torch.randint(3, 15, (4, 10), generator=torch.Generator().manual_seed(0))
    exact = _exact_crosscoder(16)
    shrink = _exact_crosscoder(16)
    with torch.no_grad():
        shrink.W_dec.mul_(0.5)  # reconstructs half of each site
    out = evaluate_on_model({"exact": exact, "half": shrink}, model=model, tokens=tokens, skip_positions=SKIP, context_batch_size=3)
    assert out["exact"]["delta_ce"] == pytest.approx(0.0, abs=1e-9)
    assert out["exact"]["kl"] == pytest.approx(0.0, abs=1e-9)
    assert out["exact"]["fvu"] == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        clean = model(tokens, output_hidden_states=True)
    hidden = clean.hidden_states  # [embeddings, layer 0 output, layer 1 output (normed last)]
    layer0 = hidden[1][:, SKIP:]
    # The crosscoder reads both sites of the clean pass; the plain computation replaces each by half of it.
    recorded = {}

    def grab(i):
        def hook(module, args, output):
            recorded[i] = (output[0] if isinstance(output, tuple) else output)[:, SKIP:].clone()

        return hook

    handles = [model.model.layers[i].register_forward_hook(grab(i)) for i in range(2)]
    with torch.no_grad():
        model(tokens)
    for h in handles:
        h.remove()
    torch.testing.assert_close(recorded[0], layer0)
    halved = _run_with(model, tokens, {0: 0.5 * recorded[0], 1: 0.5 * recorded[1]})
    zeroed = _run_with(model, tokens, {0: torch.zeros_like(recorded[0]), 1: torch.zeros_like(recorded[1])})
    assert out["half"]["spliced_ce"] == pytest.approx(_ce(halved, tokens), rel=1e-9)
    assert out["half"]["clean_ce"] == pytest.approx(_ce(clean.logits, tokens), rel=1e-9)
    assert out["half"]["zero_ablation_ce"] == pytest.approx(_ce(zeroed, tokens), rel=1e-9)
    assert out["half"]["fvu_by_site"][SITES[0]] == pytest.approx(
        _fvu(recorded[0].reshape(-1, 16), 0.5 * recorded[0].reshape(-1, 16)), rel=1e-9
    )


def test_a_crosscoder_over_several_models_is_not_spliced_into_one() -> None:
    sae = build("crosscoder", d_in=32, d_sae=8)
    sae.metadata["sites"] = ["base/layers.0.resid_post", "chat/layers.0.resid_post"]
    with pytest.raises(DataError, match="several models"):
        evaluate_on_model({"x": sae}, model=tiny_llama(), tokens=torch.randint(3, 15, (2, 6)))
