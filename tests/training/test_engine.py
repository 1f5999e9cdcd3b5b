import json

import pytest
import torch

from saekit.errors import ConfigError, DataError, DivergedError
from saekit.sae import build, list_architectures
from saekit.sources.synthetic import SyntheticSource
from saekit.training import train
from saekit.training.schedules import lr_factor
from saekit.types import ActBatch

SOURCE = SyntheticSource(d=16, n_features=48, mean_active=3, seed=1)
FAST = dict(batch_size=64, norm_estimation_tokens=64, progress=False)


def _all_architectures(seed: int = 0):
    return [build(name, d_in=16, d_sae=32, seed=seed + i) for i, name in enumerate(list_architectures())]


def _state(saes):
    return [{k: v.clone() for k, v in s.state_dict().items()} for s in saes]


def _assert_same(states_a, states_b):
    for a, b in zip(states_a, states_b, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


class Interrupted(Exception):
    pass


class InterruptingSource:
    """The synthetic source, but the stream dies when it reaches batch ``at`` (as a killed process)."""

    def __init__(self, inner, at):
        self.inner, self.at = inner, at
        self.sites, self.d_in, self.describe = inner.sites, inner.d_in, inner.describe

    def batches(self, batch_size, *, seed, start=0):
        for i, batch in enumerate(self.inner.batches(batch_size, seed=seed, start=start), start):
            if i >= self.at:
                raise Interrupted
            yield batch


def test_saes_trained_together_end_exactly_as_trained_alone():
    together = train(_all_architectures(), SOURCE, steps=15, **FAST).saes
    alone = [train(sae, SOURCE, steps=15, **FAST).sae for sae in _all_architectures()]
    _assert_same(_state(together), _state(alone))


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    settings = dict(steps=12, checkpoint_every=5, log_every=1, **FAST)
    reference = train(_all_architectures(), SOURCE, out_dir=tmp_path / "ref", **settings).saes

    with pytest.raises(Interrupted):
        train(_all_architectures(), InterruptingSource(SOURCE, at=8), out_dir=tmp_path / "run", **settings)
    # The last checkpoint is from step 5; the log has lines past it, from the dead process.
    assert max(json.loads(line)["step"] for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()) == 8
    resumed = train(_all_architectures(seed=100), SOURCE, out_dir=tmp_path / "run", resume=True, **settings).saes

    _assert_same(_state(reference), _state(resumed))
    assert (tmp_path / "run/metrics.jsonl").read_text() == (tmp_path / "ref/metrics.jsonl").read_text()


def test_a_run_resumed_at_its_last_step_returns_the_saes_it_saved(tmp_path):
    # Killed after the final checkpoint, before the SAEs were saved: the resume takes no step, and its
    # SAEs must still leave normalised units (they once came back unconverted, without their factor).
    settings = dict(steps=6, log_every=1, **FAST)
    done = train(_all_architectures(), SOURCE, out_dir=tmp_path, **settings)
    again = train(_all_architectures(seed=100), SOURCE, out_dir=tmp_path, resume=True, **settings)
    _assert_same(_state(done.saes), _state(again.saes))
    for a, b in zip(done.saes, again.saes):
        assert b.metadata["normalization_factor"] == a.metadata["normalization_factor"]
    assert again.resumed_from == 6 and again.final_metrics == [{} for _ in again.saes]


def test_resume_refuses_a_different_run(tmp_path):
    train(build("topk", d_in=16, d_sae=32, k=4), SOURCE, out_dir=tmp_path, steps=3, **FAST)
    with pytest.raises(ConfigError, match="different SAEs, sites, data or training settings"):
        train(build("topk", d_in=16, d_sae=32, k=5), SOURCE, out_dir=tmp_path, resume=True, steps=3, **FAST)
    other_data = SyntheticSource(d=16, n_features=48, mean_active=3, seed=2)
    with pytest.raises(ConfigError, match="different SAEs, sites, data or training settings"):
        train(build("topk", d_in=16, d_sae=32, k=4), other_data, out_dir=tmp_path, resume=True, steps=3, **FAST)
    # Logging and progress settings may change on resume.
    train(build("topk", d_in=16, d_sae=32, k=4), SOURCE, out_dir=tmp_path, resume=True, steps=3, **{**FAST, "log_every": 7})


@pytest.mark.filterwarnings("ignore:SAE 0 .* selects latents with the downstream gradient")
@pytest.mark.parametrize("arch", list_architectures())
def test_the_raw_scale_of_the_data_does_not_matter(arch):
    """A fresh SAE's hyper-parameters (thresholds, bandwidths, coefficients) are in normalised units, so
    the same SAE trained on x, 128·x and x/128 learns exactly the same dictionary, with its tensors in
    activation units scaled by the same factor. Powers of two make every product exact, so the runs
    must agree bit for bit: any term left in raw units would show (θ₀ scaled by the normalisation
    factor moved a JumpReLU decoder by 3e-5 in these 20 steps)."""
    x = SOURCE.sample(2048)
    trained = {c: train(build(arch, d_in=16, d_sae=32, seed=3), x * c, steps=20, **FAST).sae for c in (1.0, 2.0**7, 2.0**-7)}
    base = trained[1.0]
    probe = x[:200]
    base_tensors = dict(base.named_parameters()) | dict(base.named_buffers())
    for c, sae in trained.items():
        assert base.metadata["normalization_factor"] == c * sae.metadata["normalization_factor"]
        tensors = dict(sae.named_parameters()) | dict(sae.named_buffers())
        for name, tensor in tensors.items():
            expected = c * base_tensors[name] if name in sae.scaled_params else base_tensors[name]
            assert torch.equal(tensor, expected), name
        with torch.no_grad():
            assert torch.equal(sae.encode(probe * c), c * base.encode(probe))


@pytest.mark.parametrize("arch", ["topk_transcoder", "batch_topk_transcoder", "relu_transcoder", "jumprelu_transcoder"])
def test_a_transcoder_folds_its_input_and_output_scales_apart(arch):
    """Trained on (a·x, b·y) for powers of two a and b, a skip transcoder learns bit for bit what it learns
    on (x, y): each site is normalised by its own factor, and folding them back leaves an SAE whose codes
    and output are b times the base ones on a·x (codes live in the output's units)."""
    x = SOURCE.sample(2048)
    y = torch.tanh(x @ torch.randn(16, 12, generator=torch.Generator().manual_seed(5)))
    trained = {}
    for a, b in ((1.0, 1.0), (2.0**7, 2.0**-3), (2.0**-5, 2.0**4)):
        sae = build(arch, d_in=16, d_out=12, d_sae=32, seed=3, skip=True)
        sae.metadata.update(site="in", site_out="out")
        trained[a, b] = train(sae, {"in": x * a, "out": y * b}, steps=20, **FAST).sae
    base, probe = trained[1.0, 1.0], x[:200]
    assert base.W_skip.abs().sum() > 0, "vacuous: the skip connection did not learn"
    for (a, b), sae in trained.items():
        assert base.metadata["normalization_factor"] == a * sae.metadata["normalization_factor"]
        assert base.metadata["normalization_factor_out"] == b * sae.metadata["normalization_factor_out"]
        assert sae.metadata["site_out"] == "out"
        with torch.no_grad():
            assert torch.equal(sae.encode(probe * a), b * base.encode(probe))
            assert torch.equal(sae(probe * a), b * base(probe))
            assert torch.equal(sae.W_dec, base.W_dec)


def test_trained_sae_takes_raw_activations():
    x = SOURCE.sample(4096) * 7.0
    sae = train(build("topk", d_in=16, d_sae=64, k=4, seed=0, lr=3e-3), x, steps=150, **FAST).sae
    fvu = (sae(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert fvu < 0.5  # in raw units; a scale left unfolded would give an FVU far above 1


def test_unit_norm_decoder_and_logged_learning_rate_schedule(tmp_path):
    sae = train(
        build("topk", d_in=16, d_sae=32, k=4, lr=1e-3), SOURCE, out_dir=tmp_path, steps=20, log_every=1, lr_warmup_steps=5, **FAST
    ).sae
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(32))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 21))
    for r in records:
        assert r["lr"] == pytest.approx(1e-3 * lr_factor(r["step"] - 1, 20, 5, 0.2))
    assert sae.provenance["tokens"] == 20 * 64 and sae.provenance["final_metrics"]["l0"] == 4


def test_b_dec_starts_at_the_geometric_median_of_the_first_batch():
    from saekit.sae.functional import geometric_median

    sae = build("topk", d_in=16, d_sae=32, k=4, lr=1e-12)
    trained = train(sae, SOURCE, steps=1, normalize_activations=False, **FAST).sae
    first = next(SOURCE.batches(64, seed=0))[SOURCE.sites[0]].x
    torch.testing.assert_close(trained.b_dec, geometric_median(first), atol=1e-5, rtol=1e-5)


def test_continued_training_keeps_the_trained_b_dec():
    sae = build("topk", d_in=16, d_sae=32, k=4)
    sae = train(sae, SOURCE, steps=20, **FAST).sae
    with torch.no_grad():
        sae.b_dec.add_(5.0)  # far from the data's median, where a re-initialisation would put it back
    before = sae.b_dec.detach().clone()
    sae = train(sae, SOURCE, steps=1, **FAST).sae
    # One Adam step moves each entry by about the learning rate (0.0045 in normalised units), no more.
    assert (sae.b_dec - before).abs().max() < 0.1


class NaNAtStep:
    sites = ("s",)

    def d_in(self, site):
        return 4

    def describe(self):
        return {}

    def batches(self, batch_size, *, seed, start=0):
        i = start
        while True:
            x = torch.randn(batch_size, 4)
            if i == 3:
                x[5, 1] = float("nan")
            yield {"s": ActBatch(x)}
            i += 1


def test_nan_activations_are_named_with_site_and_step():
    with pytest.raises(DataError, match=r"site 's' contain 1 NaN or inf values \(first in row 5 of the batch at step 3\)"):
        train(build("topk", d_in=4, d_sae=8, k=2), NaNAtStep(), steps=10, batch_size=16, normalize_activations=False, progress=False)


def test_wrong_width_is_named():
    with pytest.raises(DataError, match="d_in=8 but activations at site 'synthetic' have width 16"):
        train(build("topk", d_in=8, d_sae=32, k=4), SOURCE, steps=1, **FAST)


def test_unknown_setting_is_named():
    with pytest.raises(ConfigError, match="unknown key 'stepz'"):
        train(build("topk", d_in=16, d_sae=32, k=4), SOURCE, stepz=3)


def test_multi_site_source_routes_each_sae_to_its_site():
    x_a = SOURCE.sample(512)
    x_b = x_a * 3  # same tokens at both sites, as a model gives them
    from saekit.sources.tensor import TensorSource

    source = TensorSource({"a": x_a, "b": x_b})
    sae_a, sae_b = build("topk", d_in=16, d_sae=32, k=4), build("topk", d_in=16, d_sae=32, k=4)
    sae_a.metadata["site"], sae_b.metadata["site"] = "a", "b"
    train([sae_a, sae_b], source, steps=2, **FAST)
    scale_b = sae_b.metadata["normalization_factor"]
    assert sae_a.metadata["normalization_factor"] == pytest.approx(3 * scale_b, rel=1e-5)
    orphan = build("topk", d_in=16, d_sae=32, k=4)
    orphan.metadata["site"] = "c"
    with pytest.raises(ConfigError, match=r"has site 'c', but the activation source provides \['a', 'b'\]"):
        train(orphan, source, steps=1, **FAST)


def test_a_source_may_return_any_iterator():
    class ListSource:  # batches() gives a plain list iterator, which has no close()
        sites, d_in, describe = SOURCE.sites, SOURCE.d_in, SOURCE.describe

        def batches(self, batch_size, *, seed, start=0):
            source = SOURCE.batches(batch_size, seed=seed, start=start)
            return iter([next(source) for _ in range(8)])

    trained = train(build("topk", d_in=16, d_sae=32, seed=0), ListSource(), steps=4, **FAST).sae
    reference = train(build("topk", d_in=16, d_sae=32, seed=0), SOURCE, steps=4, **FAST).sae
    _assert_same(_state([trained]), _state([reference]))


def test_train_returns_one_type_for_one_sae_or_several():
    one = train(build("topk", d_in=16, d_sae=32, k=4, seed=0), SOURCE, steps=2, **FAST)
    several = train([build("topk", d_in=16, d_sae=32, k=4, seed=s) for s in (0, 1)], SOURCE, steps=2, **FAST)
    assert type(one) is type(several)
    assert one.saes == [one.sae] and one.steps == several.steps == 2 and one.resumed_from == 0
    assert len(several.saes) == len(several.final_metrics) == 2
    with pytest.raises(ValueError, match="trained 2 SAEs"):
        _ = several.sae


def test_the_stages_run_by_hand_are_the_run(tmp_path):
    """prepare, restore_or_initialise, train_step, checkpoint and finalise, called one by one (as a
    distributed or custom driver would), give what run() gives; a checkpoint written mid-way restores
    the exact state of the run at that step."""
    from saekit.training.config import TrainConfig
    from saekit.training.engine import checkpoint, finalise, prepare, restore_or_initialise, run, train_step
    from saekit.training.objective import LocalObjective

    cfg = TrainConfig(steps=6, **FAST)
    reference = run(_all_architectures(), SOURCE, cfg)

    state = prepare(_all_architectures(), SOURCE, cfg, LocalObjective(), tmp_path, False)
    restore_or_initialise(state, resume=False)
    assert state.start == 0 and set(state.scales) == set(SOURCE.sites)
    batches = SOURCE.batches(cfg.batch_size, seed=cfg.seed)
    for step in range(3):
        train_step(state, step, next(batches))
    checkpoint(state, 3)
    at_three = _state(state.saes)
    for step in range(3, 6):
        train_step(state, step, next(batches))
    by_hand = finalise(state)
    assert by_hand.steps == reference.steps == 6
    _assert_same(_state(by_hand.saes), _state(reference.saes))

    again = prepare(_all_architectures(seed=50), SOURCE, cfg, LocalObjective(), tmp_path, True)
    restore_or_initialise(again, resume=True)
    assert again.start == 3
    _assert_same(_state(again.saes), at_three)


def test_prepare_refuses_what_cannot_run(tmp_path):
    from saekit.training.config import TrainConfig
    from saekit.training.engine import prepare
    from saekit.training.objective import LocalObjective

    cfg = TrainConfig(steps=2, **FAST)
    with pytest.raises(ConfigError, match="resume needs the output folder"):
        prepare(_all_architectures(), SOURCE, cfg, LocalObjective(), None, True)
    with pytest.raises(ConfigError, match="the list of SAEs is empty"):
        prepare([], SOURCE, cfg, LocalObjective(), tmp_path, False)
    with pytest.raises(ConfigError, match="checkpoint_every needs an output folder"):
        prepare(_all_architectures(), SOURCE, TrainConfig(steps=2, checkpoint_every=1, **FAST), LocalObjective(), None, False)


def test_an_sae_is_never_trained_on_a_site_it_does_not_name():
    """An SAE saved as layers.9 must not be trained on the layers.3 activations of a one-site source:
    evaluation would splice it at layer 9. An anonymous tensor (site "default") cannot contradict it."""
    sae = build("topk", d_in=16, d_sae=32, k=4, seed=0)
    sae.metadata["site"] = "layers.9.resid_post"
    with pytest.raises(ConfigError, match=r"has site 'layers.9.resid_post', but the activation source provides \['synthetic'\]"):
        train(sae, SOURCE, steps=1, **FAST)
    trained = train(sae, SOURCE.sample(256), steps=1, **FAST).sae
    assert trained.site == "layers.9.resid_post"


@pytest.mark.parametrize("arch", ["topk", "batch_topk"])
def test_a_run_that_diverges_to_finite_garbage_stops_with_the_sae_named(arch):
    """lr = 1e6 used to train on to an FVU of 1e29 without a word: every loss stayed finite."""
    sae = build(arch, d_in=16, d_sae=32, seed=0, lr=1e6)
    with pytest.raises(DivergedError, match=rf"SAE 0 \({arch}\) diverged at step \d+: its reconstruction error is .* times the energy") as caught:
        train(sae, SOURCE, steps=50, **FAST)
    assert isinstance(caught.value, FloatingPointError)


def _poke(path, tensor: str, value: float) -> None:
    """Overwrite every element of ``tensor`` in the safetensors file at ``path`` with ``value``, as a
    damaged disk or a stray write would (the file's checksum is left as it was)."""
    import struct

    data = bytearray(path.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    begin, end = json.loads(data[8 : 8 + length])[tensor]["data_offsets"]
    data[8 + length + begin : 8 + length + end] = struct.pack("<f", value) * ((end - begin) // 4)
    path.write_bytes(bytes(data))


def test_a_damaged_checkpoint_is_named_not_taken_for_a_divergence(tmp_path):
    """A decoder overwritten with 1e30 used to resume and stop as 'diverged: lower its learning rate'."""
    from saekit.errors import ArtifactError

    settings = dict(steps=8, checkpoint_every=4, **FAST)
    with pytest.raises(Interrupted):
        train(build("topk", d_in=16, d_sae=32, k=4), InterruptingSource(SOURCE, at=6), out_dir=tmp_path, **settings)
    _poke(tmp_path / "checkpoint.safetensors", "sae.0.W_dec", 1e30)
    with pytest.raises(ArtifactError, match=r"checkpoint.safetensors is corrupted: its content does not match its sha256 checksum"):
        train(build("topk", d_in=16, d_sae=32, k=4), SOURCE, out_dir=tmp_path, resume=True, **settings)


def test_a_checkpoint_write_the_disk_refuses_is_named_and_the_run_resumes_exactly(tmp_path):
    """The disk fills up while a checkpoint is written (a file-size limit makes the write fail part-way,
    EFBIG): the error names the file, the previous checkpoint stays, and the resume is exact."""
    from write_faults import file_size_limit, hidden_leftovers

    from saekit.errors import ArtifactError

    settings = dict(steps=9, checkpoint_every=3, log_every=1, **FAST)
    reference = train(_pair(), SOURCE, out_dir=tmp_path / "ref", **settings).saes
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        train(_pair(), InterruptingSource(SOURCE, at=5), out_dir=run, **settings)
    before = (run / "checkpoint.safetensors").read_bytes()
    with file_size_limit(len(before) // 2), pytest.raises(ArtifactError, match=rf"cannot write {run}/checkpoint.safetensors: File too large \(EFBIG\)"):
        train(_pair(seed=100), SOURCE, out_dir=run, resume=True, **settings)
    assert (run / "checkpoint.safetensors").read_bytes() == before and hidden_leftovers(run) == []
    resumed = train(_pair(seed=200), SOURCE, out_dir=run, resume=True, **settings).saes
    _assert_same(_state(reference), _state(resumed))
    assert (run / "metrics.jsonl").read_text() == (tmp_path / "ref/metrics.jsonl").read_text()


def test_a_torn_last_log_line_is_dropped_and_the_run_resumes_exactly(tmp_path):
    settings = dict(steps=8, checkpoint_every=4, log_every=1, **FAST)
    reference = train(_pair(), SOURCE, out_dir=tmp_path / "ref", **settings).saes
    with pytest.raises(Interrupted):
        train(_pair(), InterruptingSource(SOURCE, at=6), out_dir=tmp_path / "run", **settings)
    with open(tmp_path / "run/metrics.jsonl", "a") as log:
        log.write('{"step": 7, "sae": 0, "name": "00-top')  # the disk filled, or the process died, mid-line
    with pytest.warns(UserWarning, match="dropped its unfinished last line"):
        resumed = train(_pair(seed=100), SOURCE, out_dir=tmp_path / "run", resume=True, **settings).saes
    _assert_same(_state(reference), _state(resumed))
    assert (tmp_path / "run/metrics.jsonl").read_text() == (tmp_path / "ref/metrics.jsonl").read_text()


KILLER = """
import os, signal, sys
from saekit.sae import build
from saekit.sources.synthetic import SyntheticSource
from saekit.training import train

when, renamed = {when!r}, []


def kill_in_the_second_checkpoint_write(event, args):
    # a checkpoint's temporary file is created (os.open), opened to be written, and renamed (os.replace)
    if event in ("open", "os.rename") and ".checkpoint.safetensors." in str(args[0]):
        if event == when and len(renamed) == 1 and os.path.exists(args[0]):
            os.kill(os.getpid(), signal.SIGKILL)
        if event == "os.rename":
            renamed.append(args[0])


sys.addaudithook(kill_in_the_second_checkpoint_write)
saes = [build(name, d_in=16, d_sae=32, seed=i) for i, name in enumerate(("topk", "jumprelu"))]
train(saes, SyntheticSource(d=16, n_features=48, mean_active=3, seed=1), out_dir={out!r}, **{settings!r})
"""


def _pair(seed: int = 0):
    return [build(name, d_in=16, d_sae=32, seed=seed + i) for i, name in enumerate(("topk", "jumprelu"))]


@pytest.mark.slow
@pytest.mark.parametrize("when", ["open", "os.rename"], ids=["as its temporary file is opened to be written", "just before the rename"])
def test_a_run_killed_while_writing_a_checkpoint_resumes_exactly(tmp_path, when):
    """kill -9 (a real SIGKILL of a real process, at the system calls) at the two edges of the second
    checkpoint's write: the first checkpoint stays, and the resume ends bit for bit as an
    uninterrupted run, its log too."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    settings = dict(steps=9, checkpoint_every=3, log_every=1, **FAST)
    reference = train(_pair(), SOURCE, out_dir=tmp_path / "ref", **settings).saes
    run = tmp_path / "run"
    code = KILLER.format(when=when, out=str(run), settings=settings)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert any(p.name.startswith(".checkpoint.safetensors.") for p in run.iterdir())  # killed mid-write
    resumed = train(_pair(seed=100), SOURCE, out_dir=run, resume=True, **settings)
    assert resumed.resumed_from == 3
    _assert_same(_state(reference), _state(resumed.saes))
    assert (run / "metrics.jsonl").read_text() == (tmp_path / "ref/metrics.jsonl").read_text()


def test_a_distributed_run_reads_its_batches_on_the_main_thread(tmp_path):
    # A model source's batches run collectives in a distributed run; read ahead on another thread they
    # would interleave with the step's collectives in a different order on each rank.
    from types import SimpleNamespace

    from saekit.comm import LOCAL, Comm
    from saekit.sources.cache import CacheSource, write_cache
    from saekit.sources.prefetch import Prefetcher
    from saekit.training.config import TrainConfig
    from saekit.training.engine import _stream
    from saekit.training.objective import LocalObjective

    write_cache(tmp_path / "cache", [{"s": torch.randn(64, 4)}], sites=["s"], d_in={"s": 4}, info={})
    source = CacheSource(tmp_path / "cache")
    for comm, reads_ahead in ((LOCAL, True), (Comm(0, 2), False)):
        state = SimpleNamespace(
            source=source, cfg=TrainConfig(steps=1, batch_size=8), start=0, objective=LocalObjective(), device=torch.device("cpu"), comm=comm
        )
        with _stream(state) as batches:
            assert isinstance(batches, Prefetcher) is reads_ahead


def test_a_run_holds_one_sae_s_gradients_at_a_time():
    """Gradients are freed after their update: while SAE 1 back-propagates, SAE 0 holds none, and none
    is left when the run ends (thirty SAEs would otherwise keep thirty sets between steps)."""
    saes = [build("topk", d_in=16, d_sae=32, k=4, seed=i) for i in range(2)]
    others_hold_grads = []
    for p in saes[1].parameters():
        p.register_post_accumulate_grad_hook(lambda _: others_hold_grads.append(any(q.grad is not None for q in saes[0].parameters())))
    train(saes, SOURCE, steps=3, **FAST)
    assert len(others_hold_grads) == 3 * 4 and not any(others_hold_grads)  # 3 steps, 4 parameters
    assert all(p.grad is None for sae in saes for p in sae.parameters())
