import torch

from saekit.training import dead
from saekit.types import Codes


def test_counter_counts_tokens_since_last_firing():
    counter = dead.new_counter(3)
    codes = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # latent 0 fires, batch of 2 tokens
    dead.update_counter_(counter, Codes(codes))
    assert counter.tolist() == [0, 2, 2]
    dead.update_counter_(counter, Codes(torch.tensor([[0.0, 0.0, 2.0]])))
    assert counter.tolist() == [1, 3, 0]
    assert dead.dead_mask(counter, 3).tolist() == [False, True, False]


def test_given_fired_mask_resets_the_same_latents_as_the_codes():
    codes = torch.tensor([[0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    from_codes, from_mask = dead.new_counter(4), dead.new_counter(4)
    from_codes.fill_(5)
    from_mask.fill_(5)
    dead.update_counter_(from_codes, Codes(codes))
    dead.update_counter_(from_mask, Codes(codes, fired=torch.tensor([False, True, False, True])))
    assert from_codes.tolist() == from_mask.tolist() == [8, 0, 8, 0]
