"""The output folder of a run: nothing is written into it before every check has passed."""

import dataclasses
import importlib.util
from pathlib import Path

import pytest
from write_faults import snapshot

from saekit.errors import ArtifactError, ConfigError
from saekit.sae import build
from saekit.sources.synthetic import SyntheticSource
from saekit.training import train
from saekit.training.checkpoint import load_checkpoint, save_checkpoint
from saekit.training.config import TrainConfig
from saekit.training.engine import run

SOURCE = SyntheticSource(d=16, n_features=48, mean_active=3, seed=1)
FAST = dict(batch_size=64, norm_estimation_tokens=64, progress=False, log_every=1)


def _sae(k: int = 4):
    return build("topk", d_in=16, d_sae=32, k=k, seed=0)


def _interrupted_run(folder: Path) -> None:
    """A run of 6 steps whose checkpoint is at step 3 and whose log reaches step 6."""
    train(_sae(), SOURCE, out_dir=folder, steps=6, checkpoint_every=3, **FAST)
    ckpt = load_checkpoint(folder / "checkpoint.safetensors")
    path = folder / "checkpoint.safetensors"
    save_checkpoint(path, dataclasses.replace(ckpt, step=3))  # as if killed after step 3's checkpoint
    (folder / "config.json").write_text('{"the": "record of the run"}\n')


def _damage_checkpoint(folder: Path) -> None:
    path = folder / "checkpoint.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-50] + bytes([data[-50] ^ 0x10]) + data[-49:])


def _damage_log(folder: Path) -> None:
    log = folder / "metrics.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:1] + ["garbage\n"] + lines[1:]))


def _no_wandb() -> None:
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")


REFUSALS = {
    "a changed SAE": (lambda folder: None, dict(k=5), {}, ConfigError, "different SAEs, sites, data or training settings"),
    "other data": (lambda folder: None, {}, dict(source=SyntheticSource(d=16, n_features=48, mean_active=3, seed=2)), ConfigError, "different SAEs"),
    "a damaged checkpoint": (_damage_checkpoint, {}, {}, ArtifactError, "is corrupted: its content does not match its sha256 checksum"),
    "a damaged log line": (_damage_log, {}, {}, ArtifactError, r"metrics.jsonl, line 2: not a metrics record"),
    "a logger that is not installed": (lambda folder: _no_wandb(), {}, dict(wandb_project="p"), ConfigError, "wandb is not installed"),
}


@pytest.mark.parametrize("reason", REFUSALS)
def test_a_refused_resume_leaves_the_folder_byte_for_byte_as_it_was(tmp_path, reason):
    damage, sae_settings, settings, error, message = REFUSALS[reason]
    _interrupted_run(tmp_path)
    damage(tmp_path)
    before = snapshot(tmp_path)
    source = settings.pop("source", SOURCE)
    cfg = TrainConfig(steps=6, **FAST, **settings)
    with pytest.raises(error, match=message):
        run([_sae(**sae_settings)], source, cfg, out_dir=tmp_path, resume=True, start_files={"config.json": "the refused run's config"})
    assert snapshot(tmp_path) == before


def test_the_start_files_are_written_once_the_checks_pass(tmp_path):
    _interrupted_run(tmp_path)
    run([_sae()], SOURCE, TrainConfig(steps=6, **FAST), out_dir=tmp_path, resume=True, start_files={"config.json": "the resumed run's config"})
    assert (tmp_path / "config.json").read_text() == "the resumed run's config"
    train(_sae(), SOURCE, out_dir=tmp_path / "plain", steps=1, **FAST)
    assert not (tmp_path / "plain" / "config.json").exists()  # only the files asked for are written


def test_a_fresh_run_refuses_a_folder_that_holds_a_run(tmp_path):
    _interrupted_run(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError, match=r"already holds a run \(checkpoint.safetensors\); resume it"):
        train(_sae(), SOURCE, out_dir=tmp_path, steps=6, **FAST)
    assert snapshot(tmp_path) == before


def test_a_folder_where_the_checkpoint_goes_is_named(tmp_path):
    (tmp_path / "checkpoint.safetensors").mkdir()
    with pytest.raises(ArtifactError, match="checkpoint.safetensors is a folder where the run's checkpoint file goes"):
        train(_sae(), SOURCE, out_dir=tmp_path, steps=2, **FAST)
    with pytest.raises(ArtifactError, match="checkpoint.safetensors is a folder, not a checkpoint file"):
        train(_sae(), SOURCE, out_dir=tmp_path, resume=True, steps=2, **FAST)
    assert snapshot(tmp_path) == {"checkpoint.safetensors": None}


def test_a_checkpoint_past_the_end_of_the_run_is_named(tmp_path):
    _interrupted_run(tmp_path)
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, dataclasses.replace(load_checkpoint(path), step=99))
    with pytest.raises(ArtifactError, match=r"does not fit this run: step 99 of 6"):
        train(_sae(), SOURCE, out_dir=tmp_path, resume=True, steps=6, **FAST)


def test_a_fresh_run_is_not_stopped_by_the_log_of_a_run_that_died_before_its_first_checkpoint(tmp_path):
    (tmp_path / "metrics.jsonl").write_bytes(b'{"step": 1, "sae": 0}\n{"step": 2, "sa')
    train(_sae(), SOURCE, out_dir=tmp_path, steps=3, **FAST)
    assert [line[:10] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == ['{"step": 1', '{"step": 2', '{"step": 3']


def test_a_resumed_run_clears_the_temporaries_of_killed_writes_and_nothing_else(tmp_path):
    _interrupted_run(tmp_path)
    left = [".checkpoint.safetensors.0a1b2c3d.tmp", ".metrics.jsonl.deadbeef.tmp"]
    mine = [".checkpoint.safetensors.notes", "checkpoint.safetensors.0a1b2c3d.tmp"]
    for name in left + mine:
        (tmp_path / name).write_text("x")
    train(_sae(), SOURCE, out_dir=tmp_path, resume=True, steps=6, **FAST)
    assert not any((tmp_path / name).exists() for name in left)
    assert all((tmp_path / name).exists() for name in mine)
