import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from saekit.errors import DataError
from saekit.sae import build
from saekit.sources.model import ModelSource
from saekit.training import train

VOCAB, CONTEXT, BOS = 50, 9, 0


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tokens():
    g = torch.Generator().manual_seed(1)
    body = torch.randint(1, VOCAB, (12, CONTEXT - 1), generator=g)
    return torch.cat([torch.full((12, 1), BOS), body], dim=1)


def _source(model, tokens, **kw):
    return ModelSource(model, tokens, ["layers.0.resid_pre", "layers.0.resid_post", "layers.1.resid_pre"], chunk_seqs=4, forward_batch=3, **kw)


def _token_of_rows(model, rows):
    """Token id of each layer-0 resid_pre row (the embedding; Llama has no position embedding)."""
    emb = model.get_input_embeddings().weight
    return torch.cdist(rows, emb).argmin(-1)


def test_resume_at_any_batch_is_exact(model, tokens):
    source = _source(model, tokens)
    it = source.batches(10, seed=3)
    stream = [next(it) for _ in range(9)]
    for start in (0, 3, 7):
        resumed = next(source.batches(10, seed=3, start=start))
        for site in source.sites:
            assert torch.equal(resumed[site].x, stream[start][site].x)


def test_sites_stay_aligned_row_by_row(model, tokens):
    batch = next(_source(model, tokens).batches(16, seed=0))
    # The output of block 0 is the input of block 1, token for token.
    assert torch.equal(batch["layers.0.resid_post"].x, batch["layers.1.resid_pre"].x)


def test_one_epoch_visits_every_token_once_and_never_bos(model, tokens):
    source = _source(model, tokens)
    per_epoch = tokens.shape[0] * (CONTEXT - 1)  # 96 rows: 3 chunks of 4 contexts x 8 positions
    rows = torch.cat([b["layers.0.resid_pre"].x for _, b in zip(range(per_epoch // 8), source.batches(8, seed=5))])
    seen = _token_of_rows(model, rows)
    assert BOS not in seen.tolist()
    assert torch.equal(seen.sort().values, tokens[:, 1:].flatten().sort().values)


def test_different_seeds_give_different_orders(model, tokens):
    source = _source(model, tokens)
    a = next(source.batches(8, seed=0))["layers.0.resid_pre"].x
    b = next(source.batches(8, seed=1))["layers.0.resid_pre"].x
    assert not torch.equal(a, b)


def test_iter_rows_reads_every_row_once_in_order(model, tokens):
    source = _source(model, tokens)
    rows = torch.cat(list(source.iter_rows(7, site="layers.0.resid_pre", max_rows=20)))
    assert rows.shape == (20, 16)
    first_context = source.sequence_ids(0, 0)[0]
    assert torch.equal(_token_of_rows(model, rows[:8]), tokens[first_context, 1:])


def test_trains_from_the_live_model(model, tokens):
    source = _source(model, tokens)
    sae = build("topk", d_in=16, d_sae=32, k=4)
    sae.metadata["site"] = "layers.1.resid_pre"
    trained = train(sae, source, steps=3, batch_size=16, norm_estimation_tokens=16, progress=False).sae
    assert trained.provenance["data"]["kind"] == "model"


def test_bad_tokens_are_named(model):
    with pytest.raises(DataError, match="integer tensor"):
        ModelSource(model, torch.zeros(3, 4), "layers.0.resid_post")


def test_a_token_id_beyond_the_vocabulary_is_named_before_the_first_forward_pass(model, tokens):
    """An id in the last context used to surface only when the stream reached its chunk, hours in."""
    bad = tokens.clone()
    bad[-1, 4] = VOCAB + 7
    with pytest.raises(DataError, match=rf"token ids must be in \[0, {VOCAB}\), got values in \[0, {VOCAB + 7}\]"):
        _source(model, bad)
    bad[-1, 4] = -1
    with pytest.raises(DataError, match=r"got values in \[-1, "):
        _source(model, bad)


def test_a_chunk_is_let_go_before_the_next_one_is_computed(model, tokens):
    """One chunk in memory at a time: when the model runs for chunk 1, chunk 0's activations are freed
    (the rows it left for the next batch were copied out), and the batches are those of the stream."""
    import weakref

    source = _source(model, tokens)
    first = weakref.ref(source.chunk(0, 5).acts["layers.0.resid_pre"])  # remembered, reused by batches()
    alive_at_forward = []
    hook = model.register_forward_pre_hook(lambda *_: alive_at_forward.append(first() is not None))
    try:
        batches = [b["layers.0.resid_pre"].x for _, b in zip(range(4), source.batches(10, seed=5))]  # 40 rows: chunk 1 too
    finally:
        hook.remove()
    assert alive_at_forward and not any(alive_at_forward)  # chunk 1's passes (forward_batch 3: two of them)
    again = ModelSource(model, tokens, ["layers.0.resid_pre"], chunk_seqs=4, forward_batch=3)
    assert torch.equal(torch.cat(batches), torch.cat([b["layers.0.resid_pre"].x for _, b in zip(range(4), again.batches(10, seed=5))]))
