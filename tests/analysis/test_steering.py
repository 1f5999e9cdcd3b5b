import dataclasses

import pytest
import torch

import saekit
from saekit.analysis import steering as st

pytestmark = pytest.mark.usefixtures("one_thread")


def biased_relu(d=8):
    """Identity ReLU SAE with a large encoder bias on latents 0 and 1 (the 'default components')."""
    sae = saekit.build_sae("relu", d_in=d, d_sae=d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
        sae.b_dec.zero_()
        sae.b_enc.zero_()
        sae.b_enc[:2] = torch.tensor([5.0, 4.0])
    return sae


def test_pathologies_of_a_small_vector_on_a_biased_relu_sae(tmp_path):
    sae = biased_relu()
    v = torch.zeros(8)
    v[2], v[3] = 0.1, -0.2
    dec = st.decompose(sae, v, k=2, n_top=2, n_atoms=2)
    assert dec.top_latents == [0, 1] and dec.zero_top_latents == [0, 1]
    assert dec.topk_overlap_with_zero == 1.0
    assert dec.cosine_with_zero == pytest.approx(41 / (41.01 * 41) ** 0.5)  # f(v)=(5,4,.1), f(0)=(5,4)
    assert dec.negative_in_top == 1 and dec.negative_hidden == 1  # latent 3: v·d = −0.2, f(v)_3 = 0
    # f(v) − f(0) = 0.1 e_2: explains 0.01 of ||v||² = 0.05
    assert dec.sae_delta_explained == pytest.approx(1 - 0.04 / 0.05)
    assert dec.pursuit_latents == [3, 2]
    assert dec.pursuit_coefs == pytest.approx([-0.2, 0.1])
    assert dec.pursuit_explained == pytest.approx([0.8, 1.0])
    ref = torch.randn(1000, 8, generator=torch.Generator().manual_seed(0))
    assert st.decompose(sae, v, reference=ref).norm_percentile == pytest.approx(0.0)
    dec.save(tmp_path / "d")
    back = st.Decomposition.load(tmp_path / "d")
    assert back.pursuit_coefs == dec.pursuit_coefs and torch.equal(back.projections, dec.projections)
    assert back.plot(tmp_path / "d.png") is not None


def test_delta_negative_counts_latents_that_fire_more_on_negative_prompts():
    sae = biased_relu()
    pos = torch.zeros(4, 8)
    neg = torch.zeros(4, 8)
    pos[:, 4] = 1.0  # latent 4 fires more on the positive prompts
    neg[:, 5] = 2.0  # latents 5 and 6 fire more on the negative ones
    neg[:, 6] = 3.0
    dec = st.decompose(sae, pos.mean(0) - neg.mean(0), positive=pos, negative=neg, n_top=3)
    assert dec.delta_negative_in_top == 2


def test_steering_vector_and_steer_on_a_tiny_model():
    import tiny_lm

    model, tok = tiny_lm.tiny_llama().eval(), tiny_lm.tiny_tokenizer()
    site = "layers.0.resid_post"
    pos, neg = ["the cat sat", "a cat ran"], ["the dog sat", "a dog"]
    sv = st.steering_vector(model, tok, site, pos, neg)
    last = [saekit.collect_activations(model, st.prompt_ids(tok, p), [site])[site][0, -1] for p in pos + neg]
    assert torch.allclose(sv.vector, (last[0] + last[1]) / 2 - (last[2] + last[3]) / 2, atol=1e-6)
    assert st.prompt_ids(tok, "the cat")[0, 0].item() == tok.bos_token_id
    (same,) = st.steer(model, tok, site, sv.vector, ["the mat"], scale=0.0, max_new_tokens=3)
    assert same.kl == pytest.approx(0.0, abs=1e-6) and same.clean_text == same.steered_text
    (moved,) = st.steer(model, tok, site, sv.vector, ["the mat"], scale=50.0, max_new_tokens=3)
    assert moved.kl > 1e-4 and moved.steered_text != moved.clean_text
    assert all(s.steered > s.clean for s in moved.gained) and all(s.steered < s.clean for s in moved.lost)
    # a feature direction is a unit decoder row
    sae = saekit.build_sae("topk", d_in=16, d_sae=32, k=4, seed=0)
    assert st.feature_direction(sae, 3).norm() == pytest.approx(1.0)
    assert dataclasses.asdict(moved)["gained"][0][0] == moved.gained[0].token
