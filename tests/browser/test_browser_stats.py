"""The browser's statistics against brute-force computations on the full code matrix."""

import copy

import numpy as np
import pytest
import torch

import saekit
from saekit.browser.effects import final_norm_scale, logit_effects, nearest_latents
from saekit.browser.stats import Layout, StatsSettings, compute_latent_stats, firing_keys, window_rows

pytestmark = pytest.mark.usefixtures("one_thread")

LAYOUT = Layout(context=12, skip=2)
SETTINGS = StatsSettings(top_n=6, quantile_bands=3, per_band=2, reservoir=9, window_before=4, window_after=2, histogram_bins=7)


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    sae = saekit.build_sae("relu", d_in=8, d_sae=40, seed=1)
    with torch.no_grad():
        sae.b_enc.copy_(torch.linspace(-0.3, 0.1, 40))  # densities from rare to frequent, one never firing
        sae.b_enc[0] = -100.0
    acts = torch.randn(30 * LAYOUT.per_context, 8)
    encode = batch_invariant(sae)
    codes = encode(acts)
    stats = compute_latent_stats(encode, acts, 40, LAYOUT, SETTINGS, batch_size=37)
    return encode, acts, codes, stats


def batch_invariant(sae):
    """The SAE's codes computed in float64 and rounded to float32. A float32 matmul may round a row
    differently depending on how many rows it is given (the kernel, blocking and threads depend on the
    shape), which would make exact comparisons between batch sizes depend on the CPU; rounding the
    float64 result gives the same float32 for any batching, except at odds of about 1e-9 per code."""
    exact = copy.deepcopy(sae).double()

    def encode(x):
        with torch.no_grad():
            return exact.encode(x.double()).float()

    return encode


def test_top_contexts_equal_brute_force(case):
    _, _, codes, stats = case
    for j in range(codes.shape[1]):
        col = codes[:, j]
        fired = int((col > 0).sum())
        n = min(SETTINGS.top_n, fired)
        order = sorted(range(len(col)), key=lambda r: -float(col[r]))[:n]  # plain Python sort
        assert stats.top_rows[j, :n].tolist() == order
        assert torch.equal(stats.top_values[j, :n], col[order])
        assert (stats.top_rows[j, n:] == -1).all() and (stats.top_values[j, n:] == 0).all()
    assert stats.fire_count[0] == 0 and stats.fire_count[-1] > 200  # the sample spans rare to frequent


def test_batch_size_does_not_change_the_result(case):
    encode, acts, _, stats = case
    other = compute_latent_stats(encode, acts, 40, LAYOUT, SETTINGS, batch_size=len(acts))
    for name, tensor in stats.tensors().items():
        assert torch.equal(tensor, getattr(other, name)), name


def test_density_histogram_and_sums(case):
    _, _, codes, stats = case
    assert stats.fire_count.tolist() == (codes > 0).sum(0).tolist()
    assert torch.allclose(stats.act_sum, codes.double().sum(0))
    for j in range(codes.shape[1]):
        values = codes[:, j][codes[:, j] > 0].numpy()
        if len(values) == 0:
            assert stats.histogram[j].sum() == 0
            continue
        expected, _ = np.histogram(values, bins=SETTINGS.histogram_bins, range=(0, values.max()))
        assert stats.histogram[j].tolist() == expected.tolist()
    assert (stats.fire_count > 0).sum() > 30


def test_windows_hold_the_latents_activation_around_each_example(case):
    _, _, codes, stats = case
    per = LAYOUT.per_context
    for j in (5, 20, 39):
        for e, row in enumerate(stats.top_rows[j].tolist()):
            seq, pos = divmod(row, per)
            pos += LAYOUT.skip
            for w, offset in enumerate(range(-4, 3)):
                q = pos + offset
                inside = LAYOUT.skip <= q < LAYOUT.context
                expected = float(codes[seq * per + q - LAYOUT.skip, j]) if inside else 0.0
                assert float(stats.top_windows[j, e, w]) == expected
            assert float(stats.top_windows[j, e, 4]) == float(stats.top_values[j, e])


def test_window_rows_by_hand():
    rows = window_rows(torch.tensor([0, 9, 10, -1]), LAYOUT, 1, 1)
    # row 0 = context 0 position 2 (its left neighbour is a skipped position); row 9 = position 11 (last)
    assert rows.tolist() == [[-1, 0, 1], [8, 9, -1], [-1, 10, 11], [-1, -1, -1]]


def test_quantile_examples_come_from_the_smallest_hash_keys(case):
    _, _, codes, stats = case
    for j in range(codes.shape[1]):
        rows = (codes[:, j] > 0).nonzero().flatten()
        keys = firing_keys(rows, torch.full_like(rows, j), SETTINGS.seed)
        sample = rows[keys.argsort()][: SETTINGS.reservoir]
        sample = sample[codes[sample, j].argsort()]  # by value
        m = len(sample)
        picked = stats.quantile_rows[j].flatten().tolist()
        expected, last = [], None
        for b in range(SETTINGS.quantile_bands):
            for i in range(SETTINGS.per_band):
                pos = int(np.floor((b + (i + 0.5) / SETTINGS.per_band) / SETTINGS.quantile_bands * m))
                expected.append(int(sample[pos]) if pos < m and pos != last else -1)
                last = pos
        assert picked == expected, j
        values = stats.quantile_values[j].flatten()
        assert torch.equal(values[values > 0], codes[[r for r in picked if r >= 0], j])


def test_logit_effects_and_neighbours_brute_force():
    torch.manual_seed(1)
    W_dec, W_U, gamma = torch.randn(10, 6), torch.randn(50, 6), torch.rand(6) + 0.5
    effects = logit_effects(W_dec, W_U, gamma, 4, chunk=3)
    for i in range(10):
        logits = [float((W_dec[i] * gamma) @ W_U[t]) for t in range(50)]
        order = sorted(range(50), key=lambda t: -logits[t])
        assert effects.promoted_ids[i].tolist() == order[:4]
        assert effects.suppressed_ids[i].tolist() == order[::-1][:4]
        assert effects.promoted[i].tolist() == pytest.approx([logits[t] for t in order[:4]], abs=1e-5)
    near = nearest_latents(W_dec, 3, chunk=4)
    unit = W_dec / W_dec.norm(dim=1, keepdim=True)
    for i in range(10):
        cos = {j: float(unit[i] @ unit[j]) for j in range(10) if j != i}
        best = sorted(cos, key=lambda j: -cos[j])[:3]
        assert near.ids[i].tolist() == best
        assert near.cosine[i].tolist() == pytest.approx([cos[j] for j in best], abs=1e-6)


def test_final_norm_scale_of_a_llama():
    from tiny_lm import tiny_llama

    model = tiny_llama()
    with torch.no_grad():
        model.model.norm.weight.uniform_(0.5, 2.0)
    assert torch.equal(final_norm_scale(model), model.model.norm.weight)


def test_random_windows_hold_the_latents_activation_around_seeded_random_rows(case):
    encode, acts, codes, stats = case
    per = LAYOUT.per_context
    assert stats.random_rows.shape == (40, SETTINGS.random_windows)
    assert int(stats.random_rows.min()) >= 0 and int(stats.random_rows.max()) < acts.shape[0]
    assert len(set(stats.random_rows[7].tolist())) > 1 and not torch.equal(stats.random_rows[7], stats.random_rows[8])
    for j in (0, 20, 39):
        for e, row in enumerate(stats.random_rows[j].tolist()):
            seq, pos = divmod(row, per)
            for w, offset in enumerate(range(-4, 3)):
                q = pos + LAYOUT.skip + offset
                inside = LAYOUT.skip <= q < LAYOUT.context
                assert float(stats.random_windows[j, e, w]) == (float(codes[seq * per + q - LAYOUT.skip, j]) if inside else 0.0)
    again = compute_latent_stats(encode, acts, 40, LAYOUT, SETTINGS, batch_size=50)
    assert torch.equal(again.random_rows, stats.random_rows) and torch.equal(again.random_windows, stats.random_windows)
