"""saekit.sources.order: the one epoch order, pinned to the formulas the sources used before sharing it.

TensorSource batches and ModelSource contexts must be bit-identical to what they were when each
source drew its own permutations, or a run resumed across the change would read other data.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from saekit.sources.model import ModelSource
from saekit.sources.order import EpochOrder, seeded_generator
from saekit.sources.tensor import TensorSource


def old_seeded_generator(*keys: int) -> torch.Generator:
    """saekit.sources.tensor.seeded_generator as it was."""
    digest = hashlib.sha256(",".join(str(int(k)) for k in keys).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def old_tensor_batch_indices(n: int, i: int, batch_size: int, seed: int) -> torch.Tensor:
    """TensorSource._batch_indices / _permutation as they were."""
    pos, end, pieces = i * batch_size, (i + 1) * batch_size, []
    while pos < end:
        epoch, offset = divmod(pos, n)
        take = min(end - pos, n - offset)
        pieces.append(torch.randperm(n, generator=old_seeded_generator(seed, epoch))[offset : offset + take])
        pos += take
    return torch.cat(pieces)


def old_sequence_ids(n: int, chunk: int, chunk_seqs: int, seed: int) -> torch.Tensor:
    """ModelSource.sequence_ids as it was (tag _EPOCH = 11)."""
    perms: dict[int, torch.Tensor] = {}
    ids = []
    for position in range(chunk * chunk_seqs, (chunk + 1) * chunk_seqs):
        epoch, offset = divmod(position, n)
        if epoch not in perms:
            perms[epoch] = torch.randperm(n, generator=old_seeded_generator(11, seed, epoch))
        ids.append(perms[epoch][offset])
    return torch.stack(ids)


@pytest.mark.parametrize("keys", [(0,), (3, 0), (11, 5, 2), (1, 2, 2, 3), (2**40, 7)])
def test_seeded_generator_is_the_old_one(keys):
    assert torch.equal(torch.rand(8, generator=seeded_generator(*keys)), torch.rand(8, generator=old_seeded_generator(*keys)))


@pytest.mark.parametrize("n, batch_size", [(12, 4), (10, 4), (7, 16), (1, 3), (50, 7)])
def test_tensor_source_batches_are_the_old_indices(n, batch_size):
    data = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 2)
    source = TensorSource(data)
    for seed in (0, 3):
        for i, batch in zip(range(9), source.batches(batch_size, seed=seed)):
            expected = old_tensor_batch_indices(n, i, batch_size, seed)
            assert torch.equal(batch["default"].x[:, 0].long(), expected)
        resumed = next(source.batches(batch_size, seed=seed, start=20))
        assert torch.equal(resumed["default"].x[:, 0].long(), old_tensor_batch_indices(n, 20, batch_size, seed))


@pytest.mark.parametrize("n_seqs, chunk_seqs", [(12, 4), (10, 4), (3, 8), (7, 7)])
def test_model_source_contexts_are_the_old_sequence_ids(n_seqs, chunk_seqs):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=20, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)
    tokens = torch.randint(0, 20, (n_seqs, 5))
    source = ModelSource(LlamaForCausalLM(cfg).eval(), tokens, ["layers.0.resid_post"], chunk_seqs=chunk_seqs)
    for seed in (0, 4):
        for chunk in (0, 1, 2, 5, 9, 4):  # out of order too: nothing may depend on the previous call
            ids = source.sequence_ids(chunk, seed)
            assert ids.dtype == torch.int64
            assert torch.equal(ids, old_sequence_ids(n_seqs, chunk, chunk_seqs, seed))


def test_epoch_order_visits_every_item_once_per_epoch():
    order = EpochOrder(10, 2)
    stream = order.take(7, 0, 30)
    for epoch in range(3):
        assert sorted(stream[epoch * 10 : (epoch + 1) * 10].tolist()) == list(range(10))
    assert torch.equal(order.take(7, 13, 9), stream[13:22])
