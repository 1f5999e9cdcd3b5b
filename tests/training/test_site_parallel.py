"""Site-parallel training (``parallel = "sites"``) on 2 gloo processes (one thread each): each rank
trains its own SAEs on whole batches, and the run ends with the weights, log and checkpoints of the
same run in one process; checkpoints resume across modes and world sizes; a rank that dies stops the
other with a named error."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from saekit.comm import Comm
from saekit.errors import ConfigError
from saekit.sae import build
from saekit.training import train
from saekit.training.distributed import check_distributable, unit_owners
from saekit.training.objective import LocalObjective, Unit
from tests.training.test_distributed import (
    SETTINGS,
    WORLD,
    _assert_close,
    _data,
    _dies,
    _saes,
    _states,
    as_rank,
    check_a_dead_rank,
    check_checkpoints_cross,
    spawn_ranks,
    spawn_run,
)

SITES = {**SETTINGS, "parallel": "sites"}


def _all_saes():
    """Every data-parallel architecture, and one that cannot train data-parallel (a TopK transcoder, here
    reconstructing its own site)."""
    return [*_saes(), build("topk_transcoder", d_in=16, d_sae=32, k=4, seed=7)]


def _worker(rank: int, store: str, out: str, steps: int, dies_at: int | None, resume: bool) -> None:
    def body() -> None:
        data = _data() if dies_at is None else _dies(dies_at)
        result = train(_all_saes(), data, steps=steps, checkpoint_every=4, out_dir=Path(out) / "run", resume=resume, **SITES)
        trained = {f"{i}.{k}": v.detach().clone() for i in result.trained for k, v in result.saes[i].state_dict().items()}
        save_file(trained, str(Path(out) / f"weights-{rank}.safetensors"))
        (Path(out) / f"result-{rank}.json").write_text(json.dumps({
            "trained": list(result.trained), "resumed_from": result.resumed_from,
            "provenance": result.saes[result.trained[0]].provenance["distributed"], "final": result.final_metrics,
        }))  # fmt: skip

    as_rank(rank, store, body)


_spawn = functools.partial(spawn_run, _worker)


def test_each_rank_trains_its_own_saes_and_rank_0_ends_with_what_one_process_trains(tmp_path):
    single = train(_all_saes(), _data(), steps=8, **SETTINGS)
    one = _states(single.saes)
    _spawn(tmp_path, steps=8)
    results = [json.loads((tmp_path / f"result-{r}.json").read_text()) for r in range(WORLD)]
    n = len(_all_saes())
    assert results[0]["trained"] == list(range(n))  # rank 0 gathered every SAE
    own = results[1]["trained"]
    assert 0 < len(own) < n  # rank 1 trained a share of them, and holds only those
    _assert_close(load_file(tmp_path / "weights-0.safetensors"), one)
    rank_1 = load_file(tmp_path / "weights-1.safetensors")
    _assert_close(rank_1, {k: v for k, v in one.items() if int(k.split(".")[0]) in own})
    assert results[0]["provenance"] == {"mode": "sites", "world_size": WORLD}
    for r in results:  # every rank has every SAE's last logged numbers, as one process does
        assert [sorted(m) for m in r["final"]] == [sorted(m) for m in single.final_metrics]
        for got, want in zip(r["final"], single.final_metrics, strict=True):
            assert got["mse"] == pytest.approx(want["mse"], rel=1e-5)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["sae"]) for r in log] == [(s, i) for s in range(1, 9) for i in range(n)]  # one rank writes it, in order


def test_a_site_parallel_checkpoint_is_one_process_checkpoint(tmp_path):
    """Saved at 2 ranks (site parallel), resumed in one process; saved in one process, resumed at 2."""
    check_checkpoints_cross(_all_saes, _spawn, tmp_path)


def _group_worker(rank: int, store: str, out: str) -> None:
    from saekit.training.config import TrainConfig
    from saekit.training.engine import run

    def body() -> None:
        result = run(*_group_run_args(), TrainConfig(steps=6, **SITES), objective=_group_objective())
        if rank == 0:
            save_file(_states(result.saes), str(Path(out) / "group.safetensors"))

    as_rank(rank, store, body)


def _group_run_args():
    from saekit.sources.tensor import as_source

    saes = [build("topk", d_in=16, d_sae=32, k=4, seed=s) for s in (0, 1)] + [build("relu", d_in=16, d_sae=64, seed=2)]
    return saes, as_source(_data())


def _group_objective():
    from saekit.objectives.mfr import MFR

    return LocalObjective([MFR(members=(0, 1), coef=1.0, warmup_steps=2)])


def test_a_group_objective_trains_on_one_rank_as_in_one_process(tmp_path):
    """SAEs 0 and 1 share an MFR term: one unit, trained on one rank; the wider SAE 2 on the other."""
    from saekit.training.config import TrainConfig
    from saekit.training.engine import run

    one = _states(run(*_group_run_args(), TrainConfig(steps=6, **SETTINGS), objective=_group_objective()).saes)
    spawn_ranks(_group_worker, (str(tmp_path / "store"), str(tmp_path)))
    _assert_close(load_file(tmp_path / "group.safetensors"), one)


def _e2e_run():
    from saekit.objectives.e2e import E2EConfig, train_e2e
    from saekit.training.config import TrainConfig
    from tests.tiny_lm import tiny_llama

    tokens = torch.randint(3, 15, (64, 9), generator=torch.Generator().manual_seed(6))
    saes = [build("topk", d_in=16, d_sae=32, k=4, seed=2, lr=1e-2), build("jumprelu", d_in=16, d_sae=32, seed=3)]
    cfg = TrainConfig(steps=3, **{**SITES, "norm_estimation_tokens": 64})
    return train_e2e(tiny_llama(), tokens, saes, cfg, E2EConfig(downstream_sites=("layers.1.resid_post",)), site="layers.0.resid_post")


def _e2e_worker(rank: int, store: str, out: str) -> None:
    def body() -> None:
        result = _e2e_run()
        if rank == 0:
            save_file(_states(result.saes), str(Path(out) / "e2e.safetensors"))

    as_rank(rank, store, body)


def test_end_to_end_saes_train_each_on_its_own_rank_as_in_one_process(tmp_path):
    one = _states(_e2e_run().saes)
    spawn_ranks(_e2e_worker, (str(tmp_path / "store"), str(tmp_path)))
    _assert_close(load_file(tmp_path / "e2e.safetensors"), one)


def test_a_rank_that_dies_stops_the_other_with_a_named_error_and_the_run_resumes(tmp_path):
    check_a_dead_rank(_all_saes, "sites", tmp_path)


def test_units_are_shared_out_by_size_largest_first():
    saes = [build("relu", d_in=8, d_sae=d, seed=0) for d in (16, 64, 16, 32, 16)]
    # A ReLU SAE has 17·d_sae + 8 parameters: the units hold 280, 1,096, 832 (280 + 552) and 280.
    units = [Unit((0,)), Unit((1,)), Unit((2, 3)), Unit((4,))]
    # 1,096 -> rank 0; 832 -> rank 1; unit 0 -> rank 1 (832 < 1,096); unit 3 -> rank 0 (1,096 < 1,112)
    assert unit_owners(units, saes, 2) == [1, 0, 1, 0]
    assert unit_owners(units, saes, 1) == [0, 0, 0, 0]
    assert sorted(unit_owners(units, saes, 4)) == [0, 1, 2, 3]


def test_more_ranks_than_units_is_refused():
    from saekit.training.config import TrainConfig

    with pytest.raises(ConfigError, match=r"site-parallel run on 4 ranks needs at least one SAE .* this run has 3"):
        check_distributable([build("relu", d_in=8, d_sae=16)] * 3, LocalObjective(), TrainConfig(steps=1, parallel="sites"), Comm(0, 4), 3)
    with pytest.raises(ConfigError, match="parallel must be 'data', 'sites', 'latents' or 'fsdp', got 'latent'"):
        TrainConfig(steps=1, parallel="latent")  # type: ignore[arg-type]
