"""The cross-layer transcoder: its sparse training path against the dense computation, its block
structure (causal: an output never depends on a later layer's input), its per-layer TopK, and a
planted cross-layer map recovered through the engine."""

from __future__ import annotations

import pytest
import torch

from saekit.sae import build
from saekit.training import train
from saekit.types import ActBatch, StepCtx

pytestmark = pytest.mark.usefixtures("one_thread")

L, D, D_OUT, N = 3, 4, 5, 8


def _clt(skip: bool = False, **kw):
    sae = build("topk_clt", d_in=L * D, d_out=L * D_OUT, d_sae=L * N, k=6, n_layers=L, seed=0, skip=skip, **kw)
    sae.double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in sae.named_parameters():
            t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float64) * sae.param_masks().get(name, 1.0))
    return sae


@pytest.mark.parametrize("skip", [False, True])
def test_the_sparse_path_equals_the_dense_computation(skip: bool) -> None:
    """The loss and the gradient of every parameter, on the TopK family's sparse path, against
    encode / decode computed densely (AuxK off: it is the family's, tested there)."""
    sae = _clt(skip, aux_coef=0.0)
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(16, L * D, generator=g, dtype=torch.float64), torch.randn(16, L * D_OUT, generator=g, dtype=torch.float64)
    out = sae.loss(ActBatch(x, target=y), StepCtx(step=0, total_steps=1))
    out.loss.backward()
    sparse_grads = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad()
    codes = sae.encode(x)
    y_hat = codes @ sae.W_dec + sae.b_dec + (x @ sae.W_skip.t() if skip else 0)
    dense = (y - y_hat).pow(2).sum(-1).mean()
    dense.backward()
    torch.testing.assert_close(out.loss, dense)
    torch.testing.assert_close(out.x_hat, y_hat.detach())
    torch.testing.assert_close(out.codes.to_dense(), codes.detach())
    for name, p in sae.named_parameters():
        torch.testing.assert_close(sparse_grads[name], p.grad, msg=name)


def test_each_layer_keeps_k_over_L_latents_and_outputs_are_causal() -> None:
    sae = _clt()
    x = torch.randn(7, L * D, dtype=torch.float64) + 3.0
    with torch.no_grad():
        sae.b_enc.fill_(100.0)  # every pre-activation positive: each layer keeps exactly k / L
        codes = sae.encode(x)
        assert ((codes.view(7, L, N) != 0).sum(-1) == 2).all()
        later = x.clone()
        later[:, 2 * D :] += 5.0  # change only the last layer's input
        changed = sae(later) - sae(x)
    assert changed[:, : 2 * D_OUT].abs().max() == 0  # the outputs of layers 0 and 1 do not see it
    assert changed[:, 2 * D_OUT :].abs().max() > 0


def test_the_blocks_that_do_not_exist_stay_zero_through_training() -> None:
    g = torch.Generator().manual_seed(3)
    data = {f"in{i}": torch.randn(512, D, generator=g) for i in range(L)} | {f"out{i}": torch.randn(512, D_OUT, generator=g) for i in range(L)}
    sae = build("topk_clt", d_in=L * D, d_out=L * D_OUT, d_sae=L * N, k=3, n_layers=L, skip=True, seed=0)
    sae.metadata |= {"sites": [f"in{i}" for i in range(L)], "sites_out": [f"out{i}" for i in range(L)]}
    trained = train(sae, data, steps=20, batch_size=64, progress=False).sae
    params = dict(trained.named_parameters())
    for name, mask in trained.param_masks().items():
        assert float((params[name].detach() * (1 - mask)).abs().max()) == 0.0, name
        assert float((params[name].detach() * mask).abs().max()) > 0.0, name
    assert len(trained.metadata["normalization_factors_out"]) == L


@pytest.mark.parametrize(
    "settings,words",
    [
        ({"k": 5}, "multiple of n_layers=3"),
        ({"d_in": 13}, "d_in=13 must be a multiple of n_layers=3"),
        ({"d_out": 16}, "d_out=16 must be a multiple"),
        ({"n_layers": 0}, "n_layers must be a positive integer"),
    ],
)
def test_bad_settings_are_named(settings, words) -> None:
    base = {"d_in": L * D, "d_out": L * D_OUT, "d_sae": L * N, "k": 3, "n_layers": L}
    with pytest.raises(Exception, match=words):
        build("topk_clt", **(base | settings))


def planted(n: int = 12288, d: int = 8, per_layer: int = 8, seed: int = 0):
    """Per layer l, sparse features f_l: x_l = f_l A_l (scaled by l + 1), and every output m ≥ l gets
    f_l B_{l→m}. Returns the sites and the planted decoder of each feature [L · per_layer, L · d]."""
    g = torch.Generator().manual_seed(seed)

    def unit(k: int) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1)

    f = [(torch.rand(n, per_layer, generator=g) < 0.06).float() * (0.5 + torch.rand(n, per_layer, generator=g)) for _ in range(L)]
    A = [unit(per_layer) for _ in range(L)]
    B = {(a, b): unit(per_layer) * (1.0 if a == b else 0.5) for a in range(L) for b in range(a, L)}
    data = {f"in{a}": f[a] @ A[a] * (a + 1) for a in range(L)}
    data |= {f"out{b}": sum(f[a] @ B[(a, b)] for a in range(b + 1)) * 3 for b in range(L)}
    truth = torch.cat([torch.cat([B[(a, b)] if b >= a else torch.zeros(per_layer, d) for b in range(L)], 1) for a in range(L)])
    return data, truth


def test_a_planted_cross_layer_map_is_recovered() -> None:
    data, truth = planted()
    sae = build("topk_clt", d_in=L * 8, d_out=L * 8, d_sae=L * 16, k=6, n_layers=L, seed=0)
    sae.metadata |= {"sites": [f"in{i}" for i in range(L)], "sites_out": [f"out{i}" for i in range(L)]}
    trained = train(sae, data, steps=800, batch_size=256, progress=False).sae
    factors = torch.tensor(trained.metadata["normalization_factors_out"]).repeat_interleave(8)
    W = trained.W_dec.detach() * factors  # in the units of training, where the planted map is
    cos = torch.nn.functional.normalize(truth * 3 * factors, dim=1) @ torch.nn.functional.normalize(W, dim=1).T
    best = cos.max(1).values
    assert float((best > 0.9).float().mean()) >= 0.8
