"""A g-SAE is evaluated as it was trained: its selection reads the model's next-token gradient at the
site. Both readouts are reported, each against a computation by hand."""

import pytest
import torch

from saekit.eval.downstream import downstream_metrics
from saekit.eval.evaluate import evaluate
from saekit.eval.metrics import fvu
from saekit.sae import build
from saekit.sources.hf import collect_activations_and_grads
from tests.tiny_lm import tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")
SITE, SKIP = "layers.0.resid_post", 1


@pytest.fixture(scope="module")
def case():
    model = tiny_llama().double().eval()  # float64: the hand computation batches differently
    tokens = torch.randint(3, 15, (6, 10), generator=torch.Generator().manual_seed(0))
    g_sae = build("gradient_topk", d_in=16, d_sae=48, k=3, beta=5.0, seed=0).double()
    g_sae.metadata["site"] = SITE
    return model, tokens, g_sae


def test_both_readouts_equal_a_hand_computation(case):
    model, tokens, g_sae = case
    got = evaluate(g_sae, model=model, tokens=tokens, skip_positions=SKIP, context_batch_size=2)
    out = collect_activations_and_grads(model, tokens, [SITE], reduction="sum")
    x, grad = out.acts[SITE][:, SKIP:], out.grads[SITE][:, SKIP:]
    rows, grad_rows = x.reshape(-1, 16), grad.reshape(-1, 16)
    with torch.no_grad():
        with_grad = g_sae.encode_with_grad(rows, grad_rows)
        plain = g_sae.encode(rows)
        expected = {
            "gradient": (with_grad, downstream_metrics(model, tokens, SITE, lambda h: g_sae.decode(with_grad).reshape(h.shape), skip_positions=SKIP)),
            "plain": (plain, downstream_metrics(model, tokens, SITE, lambda h: g_sae.decode(plain).reshape(h.shape), skip_positions=SKIP)),
        }
    assert got["readout"] == "gradient"
    for result, (codes, down) in ((got, expected["gradient"]), (got["plain_readout"], expected["plain"])):
        assert result["l0"] == pytest.approx(3.0)
        assert result["fvu"] == pytest.approx(fvu(rows, g_sae.decode(codes)), rel=1e-9)
        assert result["delta_ce"] == pytest.approx(down.delta_ce, rel=1e-9)
        assert result["kl"] == pytest.approx(down.kl, rel=1e-9)
    assert not torch.equal(expected["gradient"][0] != 0, expected["plain"][0] != 0), "vacuous: the gradient chose nothing else"
    assert got["fvu"] != pytest.approx(got["plain_readout"]["fvu"], rel=1e-6)


def test_plain_readout_is_what_topk_with_the_same_weights_gives(case):
    model, tokens, g_sae = case
    topk = build("topk", d_in=16, d_sae=48, k=3, seed=0).double()
    topk.load_state_dict(g_sae.state_dict())
    topk.metadata["site"] = SITE
    plain = evaluate(g_sae, model=model, tokens=tokens)["plain_readout"]
    as_topk = evaluate(topk, model=model, tokens=tokens)
    for key in ("l0", "fvu", "delta_ce", "kl", "loss_recovered_zero"):
        assert plain[key] == pytest.approx(as_topk[key], rel=1e-9), key
    assert "readout" not in as_topk  # an SAE without a gradient rule has one readout
