"""ModelSource(with_grads=True): batches carry d(next-token loss)/d(activation), aligned with the
rows they belong to, free of the forward batch size, and resumable exactly."""

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from saekit.sources.model import ModelSource
from tests.tolerance import assert_close_normwise

pytestmark = pytest.mark.usefixtures("one_thread")
VOCAB, CONTEXT = 40, 7
SITES = ["layers.0.resid_post", "layers.1.resid_pre"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, VOCAB, (6, CONTEXT), generator=torch.Generator().manual_seed(2))


def plain_grads(model, contexts):
    """d(sum of next-token CE of each context)/d(output of block 0), straight from transformers."""
    rows = []
    for ctx in contexts:
        out = model(ctx[None], output_hidden_states=True)
        h = out.hidden_states[1]
        h.retain_grad()
        F.cross_entropy(out.logits[0, :-1], ctx[1:], reduction="sum").backward()
        rows.append(h.grad[0, 1:])  # position 0 is skipped by the source
    model.zero_grad(set_to_none=True)
    return torch.cat(rows)


def test_chunk_grads_equal_the_plain_gradient(model, tokens):
    source = ModelSource(model, tokens, SITES, chunk_seqs=3, forward_batch=1, with_grads=True)
    chunk = source.chunk(0, seed=4)
    expected = plain_grads(model, tokens[source.sequence_ids(0, seed=4)])
    assert_close_normwise(chunk.grads["layers.0.resid_post"], expected)
    # resid_post of block 0 is resid_pre of block 1: same tensor, same gradient
    assert_close_normwise(chunk.grads["layers.1.resid_pre"], expected)
    assert expected.abs().sum() > 0


def test_grads_do_not_depend_on_the_forward_batch(model, tokens):
    one = ModelSource(model, tokens, SITES, chunk_seqs=3, forward_batch=1, with_grads=True).chunk(1, seed=0)
    three = ModelSource(model, tokens, SITES, chunk_seqs=3, forward_batch=3, with_grads=True).chunk(1, seed=0)
    assert_close_normwise(one.grads[SITES[0]], three.grads[SITES[0]])


def test_batches_shuffle_grads_with_their_rows_and_resume_exactly(model, tokens):
    source = ModelSource(model, tokens, SITES, chunk_seqs=3, forward_batch=2, with_grads=True)
    stream = [b for _, b in zip(range(5), source.batches(7, seed=1))]
    chunk = source.chunk(0, seed=1)
    site = SITES[0]
    for row_x, row_g in zip(stream[0][site].x, stream[0][site].grad):
        match = (chunk.acts[site] == row_x).all(-1).nonzero()
        assert len(match) == 1
        assert torch.equal(chunk.grads[site][match[0, 0]], row_g)
    for start in (2, 4):
        resumed = next(source.batches(7, seed=1, start=start))
        assert torch.equal(resumed[site].x, stream[start][site].x)
        assert torch.equal(resumed[site].grad, stream[start][site].grad)
    assert source.describe()["with_grads"] is True


def test_without_grads_batches_carry_none(model, tokens):
    batch = next(ModelSource(model, tokens, SITES, chunk_seqs=3).batches(5, seed=0))
    assert batch[SITES[0]].grad is None
    assert "with_grads" not in ModelSource(model, tokens, SITES).describe()
