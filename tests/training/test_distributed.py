"""Data-parallel training on 2 gloo processes (one thread each) ends with the weights of the same run
in one process, for every distributable architecture side by side, AuxK and the batch-coupled
selections and thresholds included; checkpoints resume across world sizes."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from saekit.errors import ConfigError, DistributedError
from saekit.sae import build
from saekit.sources.tensor import as_source
from saekit.training import train
from saekit.training.distributed import DISTRIBUTABLE
from tests.training.test_engine import Interrupted, InterruptingSource

WORLD = 2
SETTINGS = dict(batch_size=64, norm_estimation_tokens=128, progress=False, log_every=1, dead_tokens=64)
ARCHS = sorted(DISTRIBUTABLE - {"gradient_topk"})  # g-SAE without gradients is TopK, already covered


def _data() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    features = torch.randn(48, 16, generator=g)
    active = (torch.rand(1024, 48, generator=g) < 0.06).float() * torch.rand(1024, 48, generator=g) * 3
    return active @ features


def _saes():
    batch = {"k": 4, "threshold_start_step": 1}
    extra = {
        "topk": {"k": 4}, "batch_topk": batch, "matryoshka_batch_topk": batch, "feature_choice": batch,
        "p_anneal": {"anneal_start": 2, "n_p_values": 4, "rescale_batches": 2},  # p changes (and λ is rescaled) within the run
    }  # fmt: skip
    saes = [build(arch, d_in=16, d_sae=32, seed=i, **extra.get(arch, {})) for i, arch in enumerate(ARCHS)]
    return [*saes, build("topk", d_in=16, d_sae=32, k=4, seed=99, aux_zipf_coef=0.1)]  # aux_zipf's running density


def _states(saes) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": v.detach().clone().contiguous() for i, sae in enumerate(saes) for k, v in sae.state_dict().items()}


def _leave() -> None:
    """Both ranks done before either tears the group down: a rank that exits while the other still
    holds its connection can abort gloo's teardown."""
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _exit() -> None:
    """End a worker that finished: its results are written and its group destroyed. The interpreter's
    teardown of torch's C++ state after a gloo group has aborted now and then under load ("terminate
    called without an active exception", SIGABRT) after the work was done, failing a test whose results
    were right; these tests check results, so a finished worker skips that teardown. (A worker that
    raised still exits normally, so its error reaches the parent.)"""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn_ranks(fn, args: tuple, timeout_s: float = 300.0) -> None:
    """Run ``fn(rank, *args)`` on WORLD processes and wait for them, at most ``timeout_s``: a hang fails
    the test (its processes killed) instead of holding the test run."""
    context = mp.start_processes(fn, args=args, nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=max(0.1, deadline - time.monotonic())):  # raises if a rank failed
        if time.monotonic() >= deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {WORLD} ranks of {fn.__name__} did not finish within {timeout_s:.0f} s: a hang")


def as_rank(rank: int, store: str, body: Callable[[], None]) -> None:
    """``body()`` as rank ``rank`` of WORLD gloo processes of one thread: a run interrupted on purpose
    (Interrupted) ends quietly; then the group is left and the process ends (:func:`_exit`)."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        body()
    except Interrupted:
        pass
    finally:
        _leave()
    _exit()


def spawn_run(worker, tmp_path: Path, steps: int, dies_at: int | None = None, resume: bool = False) -> None:
    """``worker(rank, store, out, steps, dies_at, resume)`` on WORLD processes, writing into ``tmp_path``."""
    store = tmp_path / f"store-{steps}-{dies_at}-{resume}"
    spawn_ranks(worker, (str(store), str(tmp_path), steps, dies_at, resume))


def check_checkpoints_cross(make_saes, spawn, tmp_path: Path) -> None:
    """A run of ``make_saes()`` on the tensor data that ``spawn(folder, steps=, dies_at=, resume=)`` runs on
    2 ranks (in its mode; its rank 0 writes ``result-0.json`` and ``weights-0.safetensors``) resumes in
    one process from the checkpoint it left, and a run one process left resumes under ``spawn``: both
    end with the weights of one uninterrupted process."""
    one = _states(train(make_saes(), _data(), steps=8, **SETTINGS).saes)
    spawn(tmp_path, steps=8, dies_at=6)  # both ranks die at step 6; the checkpoint holds step 4
    resumed = train(make_saes(), _data(), steps=8, checkpoint_every=4, out_dir=tmp_path / "run", resume=True, **SETTINGS)
    assert resumed.resumed_from == 4
    _assert_close(_states(resumed.saes), one)
    again = tmp_path / "again"
    again.mkdir()
    with pytest.raises(Interrupted):
        train(make_saes(), _dies(6), steps=8, checkpoint_every=4, out_dir=again / "run", **SETTINGS)
    spawn(again, steps=8, resume=True)
    assert json.loads((again / "result-0.json").read_text())["resumed_from"] == 4
    _assert_close(load_file(again / "weights-0.safetensors"), one)


def _dies(at: int) -> InterruptingSource:
    """The tensor's source, but its stream dies at batch ``at`` (as a killed process)."""
    return InterruptingSource(as_source(_data()), at)


def _worker(rank: int, store: str, out: str, steps: int, dies_at: int | None) -> None:
    def body() -> None:
        data = _data() if dies_at is None else _dies(dies_at)
        result = train(_saes(), data, steps=steps, checkpoint_every=4, out_dir=Path(out) / "run", **SETTINGS)
        if rank == 0:
            save_file(_states(result.saes), str(Path(out) / "weights.safetensors"))

    as_rank(rank, store, body)


def _spawn(tmp_path: Path, steps: int, dies_at: int | None = None) -> dict[str, torch.Tensor] | None:
    store = tmp_path / f"store-{steps}-{dies_at}"
    spawn_ranks(_worker, (str(store), str(tmp_path), steps, dies_at))
    return None if dies_at is not None else load_file(tmp_path / "weights.safetensors")


def _assert_close(a: dict[str, torch.Tensor] | None, b: dict[str, torch.Tensor]) -> None:
    assert a is not None and a.keys() == b.keys()
    for key in a:
        scale = b[key].float().norm().clamp_min(1e-6)
        assert float((a[key].float() - b[key].float()).norm() / scale) <= 1e-5, key




def test_two_ranks_train_what_one_process_trains(tmp_path):
    one = _states(train(_saes(), _data(), steps=8, **SETTINGS).saes)
    two = _spawn(tmp_path, steps=8)
    _assert_close(two, one)
    log = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(log) == 8 * (len(ARCHS) + 1)  # one rank writes the log


def test_a_run_saved_on_two_ranks_resumes_on_one(tmp_path):
    one = _states(train(_saes(), _data(), steps=8, **SETTINGS).saes)
    _spawn(tmp_path, steps=8, dies_at=6)  # both ranks die at step 6; the checkpoint holds step 4
    resumed = train(_saes(), _data(), steps=8, checkpoint_every=4, out_dir=tmp_path / "run", resume=True, **SETTINGS)
    assert resumed.resumed_from == 4
    _assert_close(_states(resumed.saes), one)


def _mfr_run(data, out_dir=None, parallel="data"):
    from saekit.objectives.mfr import MFR
    from saekit.sources.tensor import as_source
    from saekit.training.config import TrainConfig
    from saekit.training.engine import run
    from saekit.training.objective import LocalObjective

    saes = [build("topk", d_in=16, d_sae=32, k=4, seed=s) for s in (0, 1)]
    objective = LocalObjective([MFR(members=(0, 1), coef=1.0, warmup_steps=2)])
    return run(saes, as_source(data), TrainConfig(steps=8, parallel=parallel, **SETTINGS), objective=objective, out_dir=out_dir)


def _mfr_worker(rank: int, store: str, out: str, parallel: str) -> None:
    def body() -> None:
        result = _mfr_run(_data(), parallel=parallel)
        if rank == 0:
            save_file(_states(result.saes), str(Path(out) / "mfr.safetensors"))

    as_rank(rank, store, body)


def check_mfr(tmp_path: Path, parallel: str) -> None:
    """A mutual feature regularisation group trained on 2 ranks in mode ``parallel`` ends as in one process."""
    one = _states(_mfr_run(_data()).saes)
    spawn_ranks(_mfr_worker, (str(tmp_path / "store"), str(tmp_path), parallel))
    _assert_close(load_file(tmp_path / "mfr.safetensors"), one)


def test_a_mutual_feature_regularisation_group_trains_as_in_one_process(tmp_path):
    """MFR's penalty is a function of the decoders alone: every rank adds the same term."""
    check_mfr(tmp_path, "data")


def _model_run(comm):
    from saekit.sources.model import ModelSource
    from tests.tiny_lm import tiny_llama

    model = tiny_llama()
    contexts = []
    model.model.embed_tokens.register_forward_hook(lambda module, args, out: contexts.append(args[0].shape[0]))
    tokens = torch.randint(3, 15, (24, 9), generator=torch.Generator().manual_seed(5))
    source = ModelSource(model, tokens, ["layers.0.resid_post", "layers.1.resid_post"], chunk_seqs=12, forward_batch=4, comm=comm)
    saes = [build(arch, d_in=16, d_sae=32, k=4, seed=i) for i, arch in enumerate(("topk", "batch_topk"))]
    for sae, site in zip(saes, source.sites, strict=True):
        sae.metadata["site"] = site
    result = train(saes, source, steps=6, **{**SETTINGS, "batch_size": 32})
    return result, sum(contexts)


def _model_worker(rank: int, store: str, out: str) -> None:
    from saekit.comm import Comm

    def body() -> None:
        result, contexts = _model_run(Comm(rank, WORLD))
        save_file({**_states(result.saes), "contexts": torch.tensor(contexts)}, str(Path(out) / f"model-{rank}.safetensors"))

    as_rank(rank, store, body)


def test_a_model_source_splits_its_forward_passes_over_the_ranks(tmp_path):
    from saekit.comm import LOCAL

    result, contexts = _model_run(LOCAL)
    spawn_ranks(_model_worker, (str(tmp_path / "store"), str(tmp_path)))
    ranks = [load_file(tmp_path / f"model-{r}.safetensors") for r in range(WORLD)]
    _assert_close({k: v for k, v in ranks[0].items() if k != "contexts"}, _states(result.saes))
    # Each rank ran half the contexts (and, as one process does, one probe of the widths when built).
    assert [int(r["contexts"]) - 1 for r in ranks] == [(contexts - 1) // WORLD] * WORLD


def _e2e_run(parallel: str = "data"):
    from saekit.objectives.e2e import E2EConfig, train_e2e
    from saekit.training.config import TrainConfig
    from tests.tiny_lm import tiny_llama

    tokens = torch.randint(3, 15, (64, 9), generator=torch.Generator().manual_seed(6))
    saes = [build("topk", d_in=16, d_sae=32, k=4, seed=2, lr=1e-2), build("jumprelu", d_in=16, d_sae=32, seed=3)]
    cfg = TrainConfig(steps=4, parallel=parallel, **{**SETTINGS, "norm_estimation_tokens": 64})
    # e2e+ds: the KL and the downstream MSE at the later layer's output, each a mean over contexts
    e2e = E2EConfig(downstream_sites=("layers.1.resid_post",))
    model, contexts = tiny_llama(), []
    model.model.embed_tokens.register_forward_hook(lambda module, args, out: contexts.append(args[0].shape[0]))
    return train_e2e(model, tokens, saes, cfg, e2e, site="layers.0.resid_post"), sum(contexts)


def e2e_worker(rank: int, store: str, out: str, parallel: str = "data") -> None:
    def body() -> None:
        result, contexts = _e2e_run(parallel)
        if rank == 0:
            save_file({**_states(result.saes), "contexts": torch.tensor(contexts)}, str(Path(out) / "e2e.safetensors"))

    as_rank(rank, store, body)


def check_e2e(tmp_path: Path, parallel: str) -> None:
    """End-to-end training on 2 ranks in mode ``parallel`` (data or fsdp) ends as in one process, each
    rank's spliced passes over its half of the contexts."""
    result, contexts = _e2e_run()
    spawn_ranks(e2e_worker, (str(tmp_path / "store"), str(tmp_path), parallel))
    two = load_file(tmp_path / "e2e.safetensors")
    _assert_close({k: v for k, v in two.items() if k != "contexts"}, _states(result.saes))
    # The spliced passes (4 steps x 2 SAEs x 8 contexts in one process) run half the contexts on each rank.
    assert contexts - int(two["contexts"]) == 4 * 2 * 8 // WORLD


def test_end_to_end_training_splits_the_contexts_as_one_process_would(tmp_path):
    check_e2e(tmp_path, "data")


class _RankOneDies(InterruptingSource):
    """Rank 1's process ends at batch ``at`` without a word (killed); rank 0 goes on."""

    def batches(self, batch_size, *, seed, start=0):
        for i, batch in enumerate(self.inner.batches(batch_size, seed=seed, start=start), start):
            if i >= self.at and torch.distributed.get_rank() == 1:
                os._exit(1)
            yield batch


def _survivor(rank: int, store: str, out: str, make_saes, mode: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        train(make_saes(), _RankOneDies(as_source(_data()), 3), steps=8, checkpoint_every=2, out_dir=Path(out) / "run",
              collective_timeout_s=20, **{**SETTINGS, "parallel": mode})  # fmt: skip
    except DistributedError as exc:
        (Path(out) / f"error-{rank}.txt").write_text(str(exc))


def check_a_dead_rank(make_saes, mode: str, tmp_path: Path) -> None:
    """Rank 1 of a run of ``make_saes()`` in ``mode`` dies at batch 3: rank 0 stops with a named error
    within the collective timeout, never hangs, and the run resumes in one process from its checkpoint
    to one process's weights."""
    args = (str(tmp_path / "store"), str(tmp_path), make_saes, mode)
    context = mp.start_processes(_survivor, args=args, nprocs=WORLD, join=False, start_method="spawn")
    for process in context.processes:
        process.join(timeout=120)
        assert not process.is_alive(), "a rank hung after the other died"
    message = (tmp_path / "error-0.txt").read_text()
    assert message.startswith("rank 0 of 2: ") and "another rank died or did not answer in time" in message
    one = _states(train(make_saes(), _data(), steps=8, **SETTINGS).saes)
    resumed = train(make_saes(), _data(), steps=8, checkpoint_every=2, out_dir=tmp_path / "run", resume=True, **SETTINGS)
    assert resumed.resumed_from == 2
    _assert_close(_states(resumed.saes), one)


def test_a_rank_that_dies_stops_the_others_with_a_named_error_and_the_run_resumes(tmp_path):
    check_a_dead_rank(_saes, "data", tmp_path)


def test_what_cannot_run_distributed_is_refused(tmp_path):
    from saekit.comm import Comm
    from saekit.training.config import TrainConfig
    from saekit.training.distributed import check_distributable
    from saekit.training.objective import LocalObjective

    comm, cfg = Comm(rank=0, world_size=2), TrainConfig(steps=1, batch_size=64)
    class ReadsTheBatch:
        members, reads_the_batch = (0, 1), True

        def describe(self):
            return {"kind": "a term over the batch"}

    with pytest.raises(ConfigError, match=r"the objective .*a term over the batch.* cannot train in a distributed run yet"):
        check_distributable([build("relu", d_in=8, d_sae=16)] * 2, LocalObjective([ReadsTheBatch()]), cfg, comm, 1)
    with pytest.raises(ConfigError, match="batch_size 63 does not split evenly over 2 ranks"):
        check_distributable([build("relu", d_in=8, d_sae=16)], LocalObjective(), TrainConfig(steps=1, batch_size=63), comm, 1)
    assert "WORLD_SIZE" not in os.environ or os.environ["WORLD_SIZE"] == "1"
