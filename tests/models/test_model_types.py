"""One model type everywhere: every public function that takes a model gives the same result for a
bare Hugging Face model and for what ``saekit.load_model`` returns (a ``LoadedModel``)."""

from __future__ import annotations

import pytest
import torch

import saekit
from saekit.analysis import cross_layer, dark_matter, steering
from saekit.browser.effects import final_norm_scale, unembedding
from saekit.errors import DataError
from saekit.eval.downstream import downstream_metrics
from saekit.models import LoadedModel, as_module
from saekit.objectives.e2e import E2EConfig, downstream_errors, later_sites, train_e2e
from saekit.sources import sites as S
from saekit.sources.hf import add_vector, collect_activations_and_grads, site_rows
from saekit.training import TrainConfig
from tests.tiny_lm import tiny_llama, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")
SITE = "layers.0.resid_post"


@pytest.fixture(scope="module")
def bare():
    return tiny_llama().eval()


@pytest.fixture(scope="module")
def loaded(bare):
    return LoadedModel(model=bare, tokenizer=tiny_tokenizer(), name="tiny")


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(3, 15, (6, 10), generator=torch.Generator().manual_seed(0))


def sae(seed=0):
    out = saekit.build_sae("topk", d_in=16, d_sae=32, k=4, seed=seed)
    out.metadata["site"] = SITE
    return out


def same(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            same(x, y)
    else:
        assert a == b or (a != a and b != b)  # NaN equals NaN here


CALLS = {
    "collect_activations": lambda m, t: saekit.collect_activations(m, t, [SITE]),
    "collect_activations_and_grads": lambda m, t: collect_activations_and_grads(m, t, [SITE]).grads,
    "resolve_sites": lambda m, t: saekit.resolve_sites(m, "layers.*.resid_post"),
    "available_sites": lambda m, t: S.available_sites(m),
    "n_layers": lambda m, t: S.n_layers(m),
    "site_module": lambda m, t: S.site_module(m, SITE).path,
    "splice": lambda m, t: _under(saekit.splice(m, SITE, lambda h: 0.5 * h), m, t),
    "splice_sae": lambda m, t: _under(saekit.splice_sae(m, SITE, sae()), m, t),
    "add_vector": lambda m, t: _under(add_vector(m, SITE, torch.ones(16)), m, t),
    "ModelSource": lambda m, t: next(iter(saekit.ModelSource(m, t, [SITE], chunk_seqs=2).batches(8, seed=0)))[SITE].x,
    "downstream_metrics": lambda m, t: downstream_metrics(m, t, SITE, sae()).as_dict(),
    "evaluate": lambda m, t: saekit.evaluate(sae(), model=m, tokens=t),
    "evaluate_suite": lambda m, t: saekit.evaluate_suite({"a": sae()}, model=m, tokens=t),
    "later_sites": lambda m, t: later_sites(m, "layers.0.resid_pre"),
    "downstream_errors": lambda m, t: downstream_errors(m, t, SITE, sae(), ["layers.1.resid_post"]),
    "train_e2e": lambda m, t: train_e2e(
        m, t, sae(), TrainConfig(steps=2, batch_size=18, progress=False, norm_estimation_tokens=18), E2EConfig()
    ).saes[0].W_dec,
    "steering_vector": lambda m, t: steering.steering_vector(m, tiny_tokenizer(), SITE, ["the cat"], ["a dog"]).vector,
    "steer": lambda m, t: [r.steered_text for r in steering.steer(m, tiny_tokenizer(), SITE, torch.ones(16), ["the cat"], max_new_tokens=3)],
    "site_rows": lambda m, t: site_rows(m, t, [SITE], progress=False),
    "cross_layer": lambda m, t: cross_layer.run(
        [sae(0), _at(sae(1), "layers.1.resid_post")], model=m, tokens=t
    ).pairs[0].delta_ce_own_sae,
    "dark_matter": lambda m, t: dark_matter.run(
        sae(), site_rows(m, t, [SITE], progress=False)[SITE], pursuit=False, model=m, tokens=t, site=SITE
    ).downstream,
    "final_norm_scale": lambda m, t: final_norm_scale(m),
    "unembedding": lambda m, t: unembedding(m),
}


def _under(context, model, tokens):
    with context:
        return as_module(model)(tokens).logits


def _at(s, site):
    s.metadata["site"] = site
    return s


@pytest.mark.parametrize("name", sorted(CALLS))
def test_loaded_model_and_bare_model_give_the_same_result(name, bare, loaded, tokens):
    torch.manual_seed(0)
    with_bare = CALLS[name](bare, tokens)
    torch.manual_seed(0)
    with_loaded = CALLS[name](loaded, tokens)
    same(with_bare, with_loaded)


def test_collect_activations_of_the_loaded_default_model_shape(loaded, tokens):
    """The issue's example, on the tiny stand-in for SmolLM2: it used to raise "cannot find the
    transformer blocks of LoadedModel"."""
    acts = saekit.collect_activations(loaded, tokens, ["layers.1.resid_post"])
    assert acts["layers.1.resid_post"].shape == (6, 10, 16)


def test_anything_else_is_named():
    with pytest.raises(DataError, match="model must be a torch module .* got str"):
        saekit.collect_activations("smollm2-135m", torch.zeros(1, 3, dtype=torch.long), [SITE])
