"""Downstream metrics against a plain computation with hand-written forward hooks and F.cross_entropy."""

import pytest
import torch
import torch.nn.functional as F

from saekit.errors import DataError
from saekit.eval import metrics
from saekit.eval.downstream import downstream_metrics, downstream_metrics_many, recovered
from saekit.eval.evaluate import evaluate, evaluate_on_model
from saekit.sae import build
from saekit.sources.hf import collect_activations
from tests.tiny_lm import tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")

SITE = "layers.0.resid_post"
SKIP = 1


@pytest.fixture(scope="module")
def model():
    """In float64: several tests compare batchings of the same computation, which in float32 may round
    differently from one CPU (kernel, thread count) to another."""
    return tiny_llama().double().eval()


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(3, 15, (5, 12), generator=torch.Generator().manual_seed(0))


def run_replaced(model, tokens, fn):
    """Logits with positions >= SKIP of layer 0's output replaced by fn(them), via a plain forward hook."""

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        new = hidden.clone()
        if fn is not None:
            new[:, SKIP:] = fn(hidden[:, SKIP:])
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = model.model.layers[0].register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(tokens).logits
    finally:
        handle.remove()


def plain_ce(logits, tokens):
    return float(F.cross_entropy(logits[:, SKIP:-1].flatten(0, 1).double(), tokens[:, SKIP + 1 :].flatten()))


def plain_kl(clean_logits, logits):
    p = torch.log_softmax(clean_logits[:, SKIP:-1].double(), -1)
    q = torch.log_softmax(logits[:, SKIP:-1].double(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def exact_relu_sae(d: int):
    """relu(x) - relu(-x) = x: a ReLU SAE with W_enc = [I, -I], W_dec = [I; -I] reconstructs exactly."""
    sae = build("relu", d_in=d, d_sae=2 * d, seed=0)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae.metadata["site"] = SITE
    return sae


def test_metrics_equal_a_plain_computation(model, tokens):
    """The float64 model makes the two computations (batches of 2 here, all contexts at once in the
    plain one) agree far below the tolerances whatever order the CPU's kernels sum in: in float32 the
    KL of this small change (5e-5 nats) moves by 2e-4 of itself between the two batchings."""
    def halve(h):
        return 0.5 * h

    got = downstream_metrics(model, tokens, SITE, halve, skip_positions=SKIP, batch_size=2)
    clean = run_replaced(model, tokens, None)
    halved = run_replaced(model, tokens, halve)
    zeroed = run_replaced(model, tokens, torch.zeros_like)
    acts = collect_activations(model, tokens, [SITE])[SITE][:, SKIP:]
    mean = acts.reshape(-1, acts.shape[-1]).mean(0)
    meaned = run_replaced(model, tokens, lambda h: mean.expand_as(h))

    clean_ce, halved_ce = plain_ce(clean, tokens), plain_ce(halved, tokens)
    zero_ce, mean_ce = plain_ce(zeroed, tokens), plain_ce(meaned, tokens)
    assert got.clean_ce == pytest.approx(clean_ce, rel=1e-10)
    assert got.spliced_ce == pytest.approx(halved_ce, rel=1e-10)
    assert got.delta_ce == pytest.approx(halved_ce - clean_ce, rel=1e-8)
    assert got.zero_ablation_ce == pytest.approx(zero_ce, rel=1e-10)
    assert got.mean_ablation_ce == pytest.approx(mean_ce, rel=1e-10)
    assert got.loss_recovered_zero == pytest.approx((zero_ce - halved_ce) / (zero_ce - clean_ce), rel=1e-8)
    assert got.loss_recovered_mean == pytest.approx((mean_ce - halved_ce) / (mean_ce - clean_ce), rel=1e-8)
    assert got.kl == pytest.approx(plain_kl(clean, halved), rel=1e-8)
    assert got.kl > 0
    assert got.zero_ablation_kl == pytest.approx(plain_kl(clean, zeroed), rel=1e-8)
    assert got.scored_tokens == 5 * (12 - SKIP - 1)


def test_exact_reconstruction_loses_nothing_and_recovers_everything(model, tokens):
    got = downstream_metrics(model, tokens, SITE, exact_relu_sae(16), skip_positions=SKIP)
    assert got.delta_ce == pytest.approx(0.0, abs=1e-6)
    assert got.kl == pytest.approx(0.0, abs=1e-7)
    assert got.loss_recovered_zero == pytest.approx(1.0, abs=1e-5)
    assert got.loss_recovered_mean == pytest.approx(1.0, abs=1e-5)


def test_skipped_positions_are_never_replaced(model, tokens):
    seen = []

    def spy(h):
        seen.append(h.shape)
        return h

    downstream_metrics(model, tokens, SITE, spy, skip_positions=3, batch_size=5)
    assert seen == [torch.Size([5, 9, 16])]
    # Replacing position 0 by garbage is invisible when it is skipped: BOS stays clean.
    got = downstream_metrics(model, tokens, SITE, lambda h: h, skip_positions=SKIP)
    assert got.delta_ce == 0.0


def test_many_reconstructions_share_passes_and_match_single_calls(model, tokens):
    fns = {"half": lambda h: 0.5 * h, "same": lambda h: h}
    many = downstream_metrics_many(model, tokens, SITE, fns, skip_positions=SKIP, batch_size=3)
    for name, fn in fns.items():
        assert many[name] == downstream_metrics(model, tokens, SITE, fn, skip_positions=SKIP, batch_size=3)


def test_batching_does_not_change_results(model, tokens):
    a = downstream_metrics(model, tokens, SITE, lambda h: 0.8 * h, batch_size=1)
    b = downstream_metrics(model, tokens, SITE, lambda h: 0.8 * h, batch_size=5)
    for field in ("clean_ce", "spliced_ce", "zero_ablation_ce", "mean_ablation_ce", "kl"):
        assert getattr(a, field) == pytest.approx(getattr(b, field), rel=1e-5)


def test_recovered_is_nan_without_a_gap():
    assert recovered(2.0, 1.5, 1.0) == 0.5
    assert recovered(1.0, 1.0, 1.0) != recovered(1.0, 1.0, 1.0)


def test_bad_inputs_are_named(model, tokens):
    with pytest.raises(DataError, match="integer tensor"):
        downstream_metrics(model, tokens.float(), SITE, lambda h: h)
    with pytest.raises(DataError, match="no prediction"):
        downstream_metrics(model, tokens[:, :2], SITE, lambda h: h, skip_positions=1)
    with pytest.raises(DataError, match="must return a tensor of shape"):
        downstream_metrics(model, tokens, SITE, lambda h: h[:, :1])
    with pytest.raises(DataError, match="d_in=8"):
        downstream_metrics(model, tokens, SITE, build("topk", d_in=8, d_sae=16, k=2))


def test_evaluate_with_a_model_combines_activation_and_downstream_metrics(model, tokens):
    sae = build("topk", d_in=16, d_sae=64, k=4, seed=1)
    sae.metadata["site"] = SITE
    got = evaluate(sae, model=model, tokens=tokens, skip_positions=SKIP, context_batch_size=2)
    acts = collect_activations(model, tokens, [SITE])[SITE][:, SKIP:].float()  # the SAE's dtype
    on_acts = evaluate(sae, acts.reshape(-1, 16))
    for key in ("l0", "fvu", "mse", "cos", "dead_fraction", "relative_reconstruction_bias"):
        assert got[key] == pytest.approx(on_acts[key], rel=1e-5, abs=1e-7), key
    with torch.no_grad():
        err = (sae(acts) - acts).pow(2).mean(dim=(0, 2))
    assert got["mse_by_position"] == pytest.approx(err.tolist(), rel=1e-5)
    expected = downstream_metrics(model, tokens, SITE, sae, skip_positions=SKIP)
    assert got["delta_ce"] == pytest.approx(expected.delta_ce, abs=1e-6)
    assert got["site"] == SITE


def test_evaluate_on_model_groups_saes_by_site(model, tokens):
    a = build("topk", d_in=16, d_sae=32, k=2, seed=0)
    b = build("relu", d_in=16, d_sae=32, seed=1)
    a.metadata["site"] = SITE
    b.metadata["site"] = "layers.1.resid_post"
    got = evaluate_on_model({"a": a, "b": b}, model=model, tokens=tokens)
    assert [got["a"]["site"], got["b"]["site"]] == [SITE, "layers.1.resid_post"]
    alone = evaluate(b, model=model, tokens=tokens)
    assert got["b"]["spliced_ce"] == pytest.approx(alone["spliced_ce"], rel=1e-6)
    moved = evaluate(a, model=model, tokens=tokens, site="layers.1.resid_post")
    assert moved["site"] == "layers.1.resid_post" and a.site == SITE


def test_model_and_activations_are_exclusive(model, tokens):
    sae = exact_relu_sae(16)
    with pytest.raises(DataError, match="not both"):
        evaluate(sae, torch.zeros(4, 16), model=model, tokens=tokens)
    with pytest.raises(DataError, match="tokens="):
        evaluate(sae, model=model)
    with pytest.raises(DataError, match="nothing to evaluate"):
        evaluate(sae)


def mlp_transcoder(skip: bool = True):
    """A float64 skip transcoder of the tiny Llama's first MLP, its skip weights random so that they count."""
    sae = build("relu_transcoder", d_in=16, d_sae=48, skip=skip, l1_coef=0.0, seed=3).double()
    with torch.no_grad():
        if skip:
            sae.W_skip.normal_(generator=torch.Generator().manual_seed(4))
        sae.b_enc.fill_(0.05)
    sae.metadata.update(site="layers.0.mlp_in", site_out="layers.0.mlp_out")
    return sae


def run_with_mlp(model, tokens, fn):
    """Logits with positions >= SKIP of layer 0's MLP output replaced by fn(the MLP's input there), via a
    plain forward hook on the MLP module (the input it receives is the one of this very pass)."""

    def hook(module, args, output):
        new = output.clone()
        new[:, SKIP:] = fn(args[0][:, SKIP:])
        return new

    handle = model.model.layers[0].mlp.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(tokens).logits
    finally:
        handle.remove()


def test_a_transcoder_is_scored_with_the_mlp_replaced_by_it(model, tokens):
    """delta LM loss with the MLP replaced by the transcoder (computed from the MLP's input in the same
    pass), the ablations of the MLP's output, and the FVU of the output site, each against a plain
    computation."""
    sae = mlp_transcoder()
    got = evaluate(sae, model=model, tokens=tokens, skip_positions=SKIP, context_batch_size=2)
    clean = run_with_mlp(model, tokens, lambda x: model.model.layers[0].mlp.forward(x))
    with torch.no_grad():
        spliced = run_with_mlp(model, tokens, sae)
    zero = run_with_mlp(model, tokens, lambda x: torch.zeros_like(x))
    assert got["clean_ce"] == pytest.approx(plain_ce(clean, tokens), rel=1e-9)
    assert got["spliced_ce"] == pytest.approx(plain_ce(spliced, tokens), rel=1e-9)
    assert got["delta_ce"] == pytest.approx(plain_ce(spliced, tokens) - plain_ce(clean, tokens), abs=1e-9)
    assert got["zero_ablation_ce"] == pytest.approx(plain_ce(zero, tokens), rel=1e-9)
    assert got["kl"] == pytest.approx(plain_kl(clean, spliced), rel=1e-6)
    assert got["delta_ce"] > 1e-3, "vacuous: the transcoder changed nothing"
    acts = collect_activations(model, tokens, ["layers.0.mlp_in", "layers.0.mlp_out"])
    x, y = (acts[s][:, SKIP:].reshape(-1, 16) for s in ("layers.0.mlp_in", "layers.0.mlp_out"))
    with torch.no_grad():
        assert got["fvu"] == pytest.approx(metrics.fvu(y, sae(x)), rel=1e-9)
        assert got["l0"] == pytest.approx(metrics.l0(sae.encode(x)), rel=1e-6)
    assert (got["site"], got["site_out"]) == ("layers.0.mlp_in", "layers.0.mlp_out")
    assert got["fvu"] == pytest.approx(evaluate(sae, {"layers.0.mlp_in": x, "layers.0.mlp_out": y})["fvu"], rel=1e-6)


def test_a_transcoder_beside_saes_shares_its_output_site_passes(model, tokens):
    sae = mlp_transcoder(skip=False)
    other = build("topk", d_in=16, d_sae=32, k=2, seed=0).double()
    other.metadata["site"] = "layers.0.mlp_out"
    got = evaluate_on_model({"t": sae, "s": other}, model=model, tokens=tokens)
    assert got["t"]["spliced_ce"] == pytest.approx(evaluate(sae, model=model, tokens=tokens)["spliced_ce"], rel=1e-9)
    assert got["t"]["zero_ablation_ce"] == got["s"]["zero_ablation_ce"]  # one site, one ablation
    with pytest.raises(DataError, match="its sites are its metadata's site and site_out"):
        evaluate(sae, model=model, tokens=tokens, site="layers.1.mlp_out")
    with pytest.raises(DataError, match="writes 'layers.0.mlp_out', not 'layers.1.mlp_out'"):
        downstream_metrics(model, tokens, "layers.1.mlp_out", sae)
