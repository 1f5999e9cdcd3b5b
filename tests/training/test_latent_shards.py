"""Latent-sharded training (``parallel = "latents"``) on 2 gloo processes (one thread each): every SAE's
latents split over the ranks, the run ends with the weights, log and checkpoints of the same run in
one process (TopK with AuxK, BatchTopK with its threshold, JumpReLU); checkpoints resume across modes
and world sizes; a rank that dies stops the other; what cannot be sharded is refused by name."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from saekit.errors import ConfigError
from saekit.sae import build
from saekit.training import train
from saekit.training.latent_shards import check_shardable, join_states, slice_state
from saekit.training.objective import LocalObjective
from tests.training.test_distributed import (
    SETTINGS,
    WORLD,
    _assert_close,
    _data,
    _dies,
    _states,
    as_rank,
    check_a_dead_rank,
    check_checkpoints_cross,
    spawn_run,
)

LATENTS = {**SETTINGS, "parallel": "latents"}


def _saes():
    batch = {"k": 4, "threshold_start_step": 1}
    return [
        build("topk", d_in=16, d_sae=32, k=4, seed=0),  # AuxK on: dead latents appear within the run
        build("batch_topk", d_in=16, d_sae=32, seed=1, **batch),
        build("jumprelu", d_in=16, d_sae=32, seed=2),
        build("topk", d_in=16, d_sae=64, k=6, seed=3, aux_k=3),
    ]


def _worker(rank: int, store: str, out: str, steps: int, dies_at: int | None, resume: bool) -> None:
    def body() -> None:
        data = _data() if dies_at is None else _dies(dies_at)
        result = train(_saes(), data, steps=steps, checkpoint_every=4, out_dir=Path(out) / "run", resume=resume, **LATENTS)
        if rank == 0:
            save_file(_states(result.saes), str(Path(out) / "weights-0.safetensors"))
            (Path(out) / "result-0.json").write_text(json.dumps({
                "trained": list(result.trained), "resumed_from": result.resumed_from, "final": result.final_metrics,
                "provenance": result.saes[0].provenance["distributed"],
            }))  # fmt: skip
        else:
            (Path(out) / "trained-1.json").write_text(json.dumps(list(result.trained)))

    as_rank(rank, store, body)


_spawn = functools.partial(spawn_run, _worker)


def test_sharded_latents_train_what_one_process_trains(tmp_path):
    single = train(_saes(), _data(), steps=8, out_dir=tmp_path / "single", **SETTINGS)
    one_log = [json.loads(line) for line in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    assert any(r["aux_k"] > 0 for r in one_log if r["sae"] in (0, 3))  # AuxK selected dead latents over both ranks
    _spawn(tmp_path, steps=8)
    _assert_close(load_file(tmp_path / "weights-0.safetensors"), _states(single.saes))
    result = json.loads((tmp_path / "result-0.json").read_text())
    assert result["trained"] == [0, 1, 2, 3] and json.loads((tmp_path / "trained-1.json").read_text()) == []
    assert result["provenance"] == {"mode": "latents", "world_size": WORLD}
    for got, want in zip(result["final"], single.final_metrics, strict=True):
        assert sorted(got) == sorted(want)
        for key in ("mse", "l0", "dead_fraction"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["sae"]) for r in log] == [(s, i) for s in range(1, 9) for i in range(4)]


def test_a_sharded_checkpoint_is_one_process_checkpoint(tmp_path):
    """Saved with the latents over 2 ranks, resumed in one process; saved in one process, resumed sharded."""
    check_checkpoints_cross(_saes, _spawn, tmp_path)


def test_a_rank_that_dies_stops_the_other_and_the_run_resumes(tmp_path):
    check_a_dead_rank(_saes, "latents", tmp_path)


def test_slices_join_back_into_the_whole():
    sae = build("batch_topk", d_in=4, d_sae=6, k=2, seed=0)
    state = sae.state_dict()
    parts = [slice_state(state, sae.latent_axes, r, 3) for r in range(3)]
    assert parts[1]["W_enc"].shape == (4, 2) and parts[1]["W_dec"].shape == (2, 4) and parts[1]["b_dec"].shape == (4,)
    assert torch.equal(parts[2]["W_dec"], state["W_dec"][4:6]) and torch.equal(parts[0]["W_enc"], state["W_enc"][:, :2])
    joined = join_states(parts, sae.latent_axes)
    assert joined.keys() == state.keys() and all(torch.equal(joined[k], state[k]) for k in state)


def test_what_cannot_be_sharded_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"SAE 0 \(gated\) cannot be latent-sharded; .* topk, batch_topk and jumprelu"):
        check_shardable([build("gated", d_in=8, d_sae=16)], LocalObjective(), 2)
    with pytest.raises(ConfigError, match="d_sae 15 does not split evenly over 2 ranks"):
        check_shardable([build("topk", d_in=8, d_sae=15, k=2)], LocalObjective(), 2)
    with pytest.raises(ConfigError, match="k 12 exceeds the 8 latents of each of 2 ranks"):
        check_shardable([build("topk", d_in=8, d_sae=16, k=12)], LocalObjective(), 2)
    with pytest.raises(ConfigError, match="aux_zipf_loss ranks every latent's density"):
        check_shardable([build("topk", d_in=8, d_sae=16, k=2, aux_zipf_coef=0.1)], LocalObjective(), 2)

    class Group:
        members, reads_the_batch = (0, 1), False

        def describe(self):
            return {"kind": "mfr"}

    with pytest.raises(ConfigError, match="needs whole SAEs"):
        check_shardable([build("topk", d_in=8, d_sae=16, k=2)] * 2, LocalObjective([Group()]), 2)
