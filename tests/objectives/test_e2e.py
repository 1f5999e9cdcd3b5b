"""End-to-end SAE training through a tiny random Llama: the KL it optimises is the independent
KL(p_clean ‖ p_spliced) of saekit.eval.downstream, it falls, resume is exact, and e2e / e2e+ds behave
as the paper says at tiny scale (lower KL than local at equal L0; e2e+ds keeps later layers closer)."""

import copy

import pytest
import torch
import transformers

from saekit.errors import ConfigError
from saekit.eval.downstream import downstream_metrics
from saekit.io import load_sae, save_sae
from saekit.objectives.e2e import (
    E2EConfig,
    context_ids,
    downstream_errors,
    downstream_errors_of,
    kl_clean_spliced,
    later_sites,
    train_e2e,
)
from saekit.sae import build
from saekit.sources.hf import splice
from saekit.sources.model import ModelSource
from saekit.training import TrainConfig, train
from saekit.types import ActBatch, StepCtx

pytestmark = pytest.mark.usefixtures("one_thread")
SITE = "layers.0.resid_post"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                   initializer_range=0.1)  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 32, (128, 12), generator=torch.Generator().manual_seed(0))


def settings(steps, **kw):
    return TrainConfig(steps=steps, batch_size=88, progress=False, log_every=1, norm_estimation_tokens=880, **kw)


def sae(k=4, seed=0):
    return build("topk", d_in=32, d_sae=64, k=k, seed=seed, lr=1e-2)


def test_kl_by_hand():
    clean = torch.tensor([[[0.5, 0.5]]]).log()
    spliced_logits = torch.tensor([[[0.0, torch.log(torch.tensor(3.0))]]])  # p = [1/4, 3/4]
    expected = 0.5 * torch.log(torch.tensor(0.5 / 0.25)) + 0.5 * torch.log(torch.tensor(0.5 / 0.75))
    torch.testing.assert_close(kl_clean_spliced(clean, spliced_logits), expected)


def test_context_order_is_a_seeded_epoch_walk():
    ids = torch.cat([context_ids(10, 4, seed=3, step=s) for s in range(5)])  # 20 = two epochs
    assert sorted(ids[:10].tolist()) == list(range(10)) and sorted(ids[10:].tolist()) == list(range(10))
    assert torch.equal(context_ids(10, 4, seed=3, step=2), ids[8:12])
    assert not torch.equal(context_ids(10, 4, seed=4, step=0), ids[:4])


def test_later_sites_are_the_papers_hooks(model):
    """e2e_sae's gpt2_e2e_recon.yaml: an SAE at blocks.6.hook_resid_pre of 12 blocks reads
    blocks.7..11.hook_resid_pre downstream, stopping at the last block's input."""
    twelve = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=12, num_attention_heads=2)
    )
    assert later_sites(twelve, "layers.6.resid_pre") == [f"layers.{i}.resid_pre" for i in range(7, 12)]
    assert later_sites(twelve, "layers.5.resid_post") == later_sites(twelve, "layers.6.resid_pre")  # the same tensor
    assert later_sites(model, "layers.0.resid_post") == ["layers.2.resid_pre"]
    assert later_sites(model, "layers.1.mlp_out") == ["layers.2.resid_pre"]
    assert later_sites(model, "layers.2.resid_pre") == []


def test_e2e_ds_loss_is_the_papers_by_hand(model, tokens, tmp_path):
    """The first step's logged loss against the objective written out from e2e_sae's losses.py:
    0.5 · KL(p_clean ‖ p_spliced) + sparsity + (2.5 / N) Σ_k F.mse_loss(a_k^spliced, a_k^clean)."""
    import json

    relu = build("relu", d_in=32, d_sae=64, seed=0, l1_coef=0.05)
    relu.metadata.update(site=SITE, normalization_factor=1.0)  # trained: b_dec kept, nothing re-initialised
    cfg = TrainConfig(steps=1, batch_size=44, progress=False, log_every=1, normalize_activations=False, sparsity_warmup_steps=0)
    hooks = ["layers.1.resid_post", "layers.2.resid_post"]  # N = 2, one of them the last block's output
    e2e = E2EConfig(downstream_sites=tuple(hooks), skip_positions=1)
    outputs = []  # the blocks' outputs, read by a plain forward hook (hidden_states[-1] is after the final norm)
    handles = [model.model.layers[i].register_forward_hook(lambda m, i, o: outputs.append(o[0] if isinstance(o, tuple) else o)) for i in range(3)]
    with torch.no_grad():
        start = copy.deepcopy(relu)
        part = tokens[context_ids(tokens.shape[0], 4, seed=0, step=0)]  # 44 tokens = 4 contexts of 11 scored
        clean = model(input_ids=part)
        clean_out, outputs[:] = outputs[:], []
        h = clean_out[0][:, 1:]  # layers.0.resid_post, positions >= 1
        rows = h.reshape(-1, 32)
        out = start.loss(ActBatch(rows), StepCtx(step=0, total_steps=1))
        sparsity = out.loss - (out.x_hat - rows).pow(2).sum(-1).mean()  # the architecture's own L1 term
        assert sparsity > 0

        def replace(a):
            return torch.cat([a[:, :1], start(a[:, 1:].reshape(-1, 32)).reshape(a[:, 1:].shape)], dim=1)

        with splice(model, SITE, replace):
            spliced = model(input_ids=part)
        for handle in handles:
            handle.remove()
        p = clean.logits[:, 1:].float().log_softmax(-1)
        q = spliced.logits[:, 1:].float().log_softmax(-1)
        kl = (p.exp() * (p - q)).sum(-1).mean()
        mse = [torch.nn.functional.mse_loss(outputs[i][:, 1:], clean_out[i][:, 1:]) for i in (1, 2)]
        expected = 0.5 * kl + sparsity + 2.5 / 2 * (mse[0] + mse[1])
    train_e2e(model, tokens, relu, cfg, e2e, out_dir=tmp_path)
    (record,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert record["kl"] == pytest.approx(float(kl), rel=1e-4)
    assert record["downstream_mse"] == pytest.approx(float(sum(mse) / 2), rel=1e-4)
    assert record["loss"] == pytest.approx(float(expected), rel=1e-4)


def test_later_with_no_block_after_the_site_is_named(model, tokens):
    with pytest.raises(ConfigError, match="name no site after 'layers.2.resid_pre'"):
        train_e2e(model, tokens, sae(), settings(1), E2EConfig(downstream_sites=("later",)), site="layers.2.resid_pre")


def test_a_transcoder_is_refused_by_name(model, tokens):
    transcoder = build("topk_transcoder", d_in=sae().d_in, d_sae=16, k=2)
    transcoder.metadata.update(site="layers.1.mlp_in", site_out="layers.1.mlp_out")
    with pytest.raises(ConfigError, match=r"e2e: SAE 1 \(topk_transcoder\) is a transcoder"):
        train_e2e(model, tokens, [sae(), transcoder], settings(1))


def test_kl_weight_defaults_to_the_papers():
    assert E2EConfig().resolved_kl_coef == 1.0
    assert E2EConfig(downstream_sites=("later",)).resolved_kl_coef == 0.5
    assert E2EConfig(kl_coef=0.7, downstream_sites=("later",)).resolved_kl_coef == 0.7
    with pytest.raises(ValueError, match="downstream_coef has no effect"):
        E2EConfig(downstream_coef=1.0)


def test_logged_kl_falls_and_matches_the_independent_metric(model, tokens, tmp_path):
    result = train_e2e(model, tokens[:64], sae(), settings(40), site=SITE, out_dir=tmp_path)
    import json

    kls = [json.loads(line)["kl"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sum(kls[-5:]) / 5 < 0.5 * sum(kls[:5]) / 5, kls
    trained = result.saes[0]
    assert trained.metadata["site"] == SITE and trained.metadata["normalization_factor"] > 0
    # The final SAE takes raw activations: its KL measured by eval.downstream is small, like the log's.
    measured = downstream_metrics(model, tokens[:64], SITE, trained).kl
    assert measured < 0.5 * sum(kls[:5]) / 5
    assert all(p.grad is None for p in model.parameters()), "the model must not accumulate gradients"
    assert all(p.requires_grad for p in model.parameters()), "requires_grad is restored"


def test_interrupted_e2e_run_resumes_to_the_same_weights(model, tokens, tmp_path, monkeypatch):
    import saekit.training.engine as e2e_module

    cfg = settings(6, checkpoint_every=3)
    reference = train_e2e(model, tokens, sae(), cfg, site=SITE, out_dir=tmp_path / "ref").saes[0]

    real_update, calls = e2e_module.apply_update, []

    def dies_at_step_5(*args, **kwargs):  # the process is killed during step 5 (after the step-3 checkpoint)
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        real_update(*args, **kwargs)

    monkeypatch.setattr(e2e_module, "apply_update", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train_e2e(model, tokens, sae(), cfg, site=SITE, out_dir=tmp_path / "run")
    monkeypatch.setattr(e2e_module, "apply_update", real_update)
    resumed = train_e2e(model, tokens, sae(seed=9), cfg, site=SITE, out_dir=tmp_path / "run", resume=True)
    assert resumed.resumed_from == 3
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed.saes[0].state_dict()[key]), key
    with pytest.raises(ConfigError, match="different SAEs, sites, data or training settings"):
        train_e2e(model, tokens, sae(k=5), cfg, site=SITE, out_dir=tmp_path / "run", resume=True)


def test_fine_tuning_starts_from_the_given_sae(model, tokens, tmp_path):
    local = train(sae(), ModelSource(model, tokens, SITE, chunk_seqs=32), config=settings(30)).sae
    start = load_sae(save_sae(local, tmp_path / "local"))
    b_dec = start.b_dec.detach().clone()
    before = downstream_metrics(model, tokens[:32], SITE, start).kl
    tuned = train_e2e(model, tokens, start, settings(1, lr_warmup_steps=0), site=SITE).saes[0]
    # one step at a small learning rate: b_dec moved by at most lr per coordinate, not re-initialised
    assert (tuned.b_dec.detach() - b_dec).abs().max() <= 1.1e-2 * tuned.metadata["normalization_factor"] ** -1
    tuned = train_e2e(model, tokens, tuned, settings(30), site=SITE).saes[0]
    assert downstream_metrics(model, tokens[:32], SITE, tuned).kl < before


def test_downstream_errors_against_hidden_states(model, tokens):
    """Normalised errors at layer 1 against transformers' own hidden states (hidden_states[2] is the
    output of layer 1), with positions < skip left unreplaced; several SAEs share one clean pass. In
    float64: the errors are differences of activations computed in two batchings."""
    model = copy.deepcopy(model).double()
    saes = {"a": sae(k=2, seed=1).double(), "b": sae(k=8, seed=2).double()}
    part, skip = tokens[:5], 2
    with torch.no_grad():
        clean = model(input_ids=part, output_hidden_states=True).hidden_states[2][:, skip:].double()
        expected = {}
        for name, s in saes.items():

            def keep_first(h, s=s):
                rec = s(h[:, skip:].reshape(-1, 32)).reshape(h[:, skip:].shape)
                return torch.cat([h[:, :skip], rec], dim=1)

            with splice(model, SITE, keep_first):
                spliced = model(input_ids=part, output_hidden_states=True).hidden_states[2][:, skip:].double()
            expected[name] = float((spliced - clean).pow(2).sum() / clean.pow(2).sum())
    got = downstream_errors_of(
        model, part, SITE, saes, ["layers.1.resid_post", "layers.2.resid_post"], skip_positions=skip, batch_size=2
    )
    for name in saes:
        assert got[name]["layers.1.resid_post"] == pytest.approx(expected[name], rel=1e-9)
        assert got[name]["layers.2.resid_post"] > 0
        one = downstream_errors(model, part, SITE, saes[name], ["layers.1.resid_post"], skip_positions=skip)
        assert one["layers.1.resid_post"] == pytest.approx(expected[name], rel=1e-9)
    assert expected["a"] != pytest.approx(expected["b"], rel=1e-3)  # the SAEs are told apart
    with pytest.raises(ConfigError, match="spliced site itself"):
        downstream_errors_of(model, part, SITE, saes, [SITE])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_train_dtype_sets_the_precision_of_both_passes(model, tokens, dtype):
    """TrainConfig.dtype is honoured (it was silently ignored): the clean and the spliced passes run
    the model's matmuls in that dtype, and training still lowers the KL."""
    seen = []
    handle = model.model.layers[2].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        result = train_e2e(model, tokens[:64], sae(), settings(12, dtype=dtype), site=SITE)
    finally:
        handle.remove()
    # per step: one clean and one spliced pass; plus the passes of the normalisation estimate
    assert len(seen) >= 24 and set(seen) == {getattr(torch, dtype)}, set(seen)
    start = train_e2e(model, tokens[:64], sae(), settings(1, lr_warmup_steps=0), site=SITE).saes[0]
    assert (
        downstream_metrics(model, tokens[:64], SITE, result.saes[0]).kl < downstream_metrics(model, tokens[:64], SITE, start).kl
    )


def test_an_sae_without_a_site_is_named(model, tokens):
    with pytest.raises(ConfigError, match="has no site"):
        train_e2e(model, tokens, sae(), settings(1))


@pytest.mark.slow
def test_e2e_beats_local_on_kl_and_ds_keeps_later_layers_closer(model, tokens):
    held = torch.randint(0, 32, (32, 12), generator=torch.Generator().manual_seed(1))
    cfg = settings(300)
    local = train(sae(k=2), ModelSource(model, tokens, SITE, chunk_seqs=32), config=cfg).sae
    e2e = train_e2e(model, tokens, sae(k=2), cfg, site=SITE).saes[0]
    ds = train_e2e(model, tokens, sae(k=2), cfg, E2EConfig(downstream_sites=("later",)), site=SITE).saes[0]
    kl = {name: downstream_metrics(model, held, SITE, s).kl for name, s in [("local", local), ("e2e", e2e)]}
    later = ["layers.1.resid_post", "layers.2.resid_post"]
    err = {name: sum(downstream_errors(model, held, SITE, s, later).values()) for name, s in [("e2e", e2e), ("ds", ds)]}
    print({"kl": kl, "err": err})
    assert kl["e2e"] < kl["local"], kl  # equal L0: TopK k = 2 for both
    assert err["ds"] < err["e2e"], err
