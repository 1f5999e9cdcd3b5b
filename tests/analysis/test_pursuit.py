import pytest
import torch

from saekit.analysis.pursuit import gradient_pursuit, signed_pursuit


def test_signed_pursuit_on_a_redundant_dictionary():
    g = torch.Generator().manual_seed(0)
    D = torch.randn(50, 10, generator=g, dtype=torch.float64)
    Du = D / D.norm(dim=-1, keepdim=True)
    v = 2.0 * Du[7] - 1.0 * Du[30]
    p = signed_pursuit(v, D, 5)
    assert p.explained[-1] == pytest.approx(1.0)
    assert (p.explained[1:] >= p.explained[:-1] - 1e-12).all()
    assert torch.allclose(p.coefs @ Du[p.indices], v, atol=1e-9)


def test_gradient_pursuit_recovers_a_sparse_code_on_an_orthonormal_dictionary():
    g = torch.Generator().manual_seed(0)
    d = 16
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    W_dec = 3.0 * Q  # rows orthogonal, norm 3: codes come back in W_dec's scale
    b_dec = torch.randn(d, generator=g, dtype=torch.float64)
    codes = torch.zeros(5, d, dtype=torch.float64)
    codes[0, [1, 4]] = torch.tensor([2.0, -1.0], dtype=torch.float64)
    codes[1, [0, 7, 9]] = torch.tensor([0.5, 1.5, 3.0], dtype=torch.float64)
    x = codes @ W_dec + b_dec
    out = gradient_pursuit(x, W_dec, b_dec, torch.tensor([2, 3, 0, 1, 1]))
    assert torch.allclose(out.codes[:2], codes[:2], atol=1e-9)
    assert torch.allclose(out.x_hat[:2], x[:2], atol=1e-9)
    assert torch.allclose(out.x_hat[2], b_dec)  # no atoms allowed
    assert ((out.codes != 0).sum(-1) <= torch.tensor([2, 3, 0, 1, 1])).all()


def test_gradient_pursuit_residual_shrinks_with_more_atoms():
    g = torch.Generator().manual_seed(2)
    W_dec = torch.randn(64, 16, generator=g)
    x = torch.randn(200, 16, generator=g)
    errs = [float((x - gradient_pursuit(x, W_dec, torch.zeros(16), torch.full((200,), k)).x_hat).pow(2).sum()) for k in (1, 4, 8)]
    assert errs[0] > errs[1] > errs[2]
