"""Fully sharded data parallel (``parallel = "fsdp"``) on 2 gloo processes (one thread each): every
distributable architecture with its parameters and Adam moments split over the ranks ends with the
weights, log and checkpoints of the same run in one process; checkpoints resume across modes and world
sizes; a rank that dies stops the other; an MFR group and end-to-end SAEs train as in one process."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from saekit.training import train
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
    check_e2e,
    check_mfr,
    spawn_run,
)

FSDP = {**SETTINGS, "parallel": "fsdp"}


def _worker(rank: int, store: str, out: str, steps: int, dies_at: int | None, resume: bool) -> None:
    def body() -> None:
        data = _data() if dies_at is None else _dies(dies_at)
        saes = _saes()
        result = train(saes, data, steps=steps, checkpoint_every=4, out_dir=Path(out) / "run", resume=resume, **FSDP)
        save_file(_states(result.saes), str(Path(out) / f"weights-{rank}.safetensors"))
        if rank == 0:
            (Path(out) / "result-0.json").write_text(json.dumps({
                "trained": list(result.trained), "resumed_from": result.resumed_from, "final": result.final_metrics,
                "provenance": result.saes[0].provenance["distributed"], "given": all(a is b for a, b in zip(result.saes, saes)),
                "sharded": sorted({type(p).__name__ for sae in result.saes for p in sae.parameters()}),
            }))  # fmt: skip

    as_rank(rank, store, body)


_spawn = functools.partial(spawn_run, _worker)


def test_fully_sharded_saes_train_what_one_process_trains(tmp_path):
    single = train(_saes(), _data(), steps=8, out_dir=tmp_path / "single", **SETTINGS)
    _spawn(tmp_path, steps=8)
    for rank in range(WORLD):  # every rank ends holding the whole trained SAEs, as data parallel's replicas do
        _assert_close(load_file(tmp_path / f"weights-{rank}.safetensors"), _states(single.saes))
    result = json.loads((tmp_path / "result-0.json").read_text())
    assert result["trained"] == list(range(len(single.saes))) and result["given"] and result["sharded"] == ["Parameter"]
    assert result["provenance"] == {"mode": "fsdp", "world_size": WORLD}
    for got, want in zip(result["final"], single.final_metrics, strict=True):
        assert sorted(got) == sorted(want)
        for key in ("mse", "l0", "dead_fraction"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key
    one_log = (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()
    log = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [(r["step"], r["sae"]) for r in map(json.loads, log)] == [(r["step"], r["sae"]) for r in map(json.loads, one_log)]


def test_a_fully_sharded_checkpoint_is_one_process_checkpoint(tmp_path):
    """Saved sharded over 2 ranks, resumed in one process; saved in one process, resumed sharded."""
    check_checkpoints_cross(_saes, _spawn, tmp_path)


def test_a_rank_that_dies_stops_the_other_and_the_run_resumes(tmp_path):
    check_a_dead_rank(_saes, "fsdp", tmp_path)


def test_end_to_end_saes_train_fully_sharded_as_in_one_process(tmp_path):
    check_e2e(tmp_path, "fsdp")


def test_a_mutual_feature_regularisation_group_trains_fully_sharded_as_in_one_process(tmp_path):
    """The group term reads its members' decoders after their losses, while FSDP holds them whole."""
    check_mfr(tmp_path, "fsdp")
