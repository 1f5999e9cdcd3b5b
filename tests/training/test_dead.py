import torch

from saekit.training import dead


def test_counter_counts_tokens_since_last_firing():
    counter = dead.new_counter(3)
    codes = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # latent 0 fires, batch of 2 tokens
    dead.update_counter_(counter, codes)
    assert counter.tolist() == [0, 2, 2]
    dead.update_counter_(counter, torch.tensor([[0.0, 0.0, 2.0]]))
    assert counter.tolist() == [1, 3, 0]
    assert dead.dead_mask(counter, 3).tolist() == [False, True, False]
