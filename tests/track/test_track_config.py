"""The [track] table and the checkpoints it names: every mistake is named before anything trains."""

from __future__ import annotations

import pytest

from saekit.errors import ConfigError
from saekit.track.config import TrackConfig, load_track_config, parse_track_config
from tests.track.tiny_checkpoints import track_toml, write_checkpoints


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return write_checkpoints(tmp_path_factory.mktemp("ckpts"), steps=(0, 2, 10))


def test_a_checkpoint_folder_is_read_in_step_order(checkpoints, tmp_path):
    (checkpoints.parent / "notes").mkdir(exist_ok=True)
    path = tmp_path / "t.toml"
    path.write_text(track_toml(checkpoints, tmp_path / "out"))
    tr = load_track_config(path)
    assert [c.label for c in tr.checkpoints] == ["step-0", "step-2", "step-10"]  # 10 after 2, not after 0
    assert [c.step for c in tr.checkpoints] == [0, 2, 10]
    assert tr.checkpoints[2].folder_name == "02-step-10"
    assert tr.run.train.steps == 12 and tr.track.steps == 6


def test_hub_revisions_are_labelled_by_revision(checkpoints):
    track = TrackConfig(checkpoints=("hf://EleutherAI/pythia-70m@step1000", str(checkpoints / "step-2")))
    from saekit.track.config import resolve_checkpoints

    got = resolve_checkpoints(track)
    assert [(c.label, c.step) for c in got] == [("step1000", 1000), ("step-2", 2)]


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda raw: raw.pop("track"), r"needs a \[track\] table"),
        (lambda raw: raw["track"].update(checkpoints=["a"]), "not both"),
        (lambda raw: raw["track"].update(steps=0), "track.steps"),
        (lambda raw: raw["track"].update(top_k=1), "at least 2"),
        (lambda raw: raw["track"].update(warmup_steps=7), "warmup_steps"),
        (lambda raw: raw["track"].update(lr_factor=-1.0), "lr_factor"),
        (lambda raw: raw["track"].update(start="middle"), "'middle'"),
        (lambda raw: raw["track"].update(stpes=3), "stpes"),
        (lambda raw: raw["data"].update(model="x"), "data.model"),
        (lambda raw: raw["data"].update(kind="synthetic"), "'kind' must be one of model, games"),
        (lambda raw: raw["track"].update(checkpoint_folder="/nonexistent/x"), "is not a folder"),
    ],
)
def test_bad_track_configs_are_named(checkpoints, tmp_path, edit, words):
    from saekit.cli.run_config import read_config_file

    path = tmp_path / "t.toml"
    path.write_text(track_toml(checkpoints, tmp_path / "out"))
    raw = read_config_file(path)
    edit(raw)
    with pytest.raises(ConfigError, match=words):
        parse_track_config(raw)


def test_a_listed_checkpoint_that_is_not_a_model_is_named(checkpoints, tmp_path):
    with pytest.raises(ConfigError, match=r"checkpoints\[1\].*not a model folder"):
        from saekit.track.config import resolve_checkpoints

        resolve_checkpoints(TrackConfig(checkpoints=(str(checkpoints / "step-0"), str(tmp_path))))
    with pytest.raises(ConfigError, match="at least two checkpoints"):
        resolve_checkpoints(TrackConfig(checkpoints=(str(checkpoints / "step-0"),)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no step-<n> model folders"):
        resolve_checkpoints(TrackConfig(checkpoint_folder=str(empty)))


def test_the_file_is_named_in_errors(checkpoints, tmp_path):
    path = tmp_path / "t.toml"
    path.write_text(track_toml(checkpoints, tmp_path / "out", extra="bogus = 1"))
    with pytest.raises(ConfigError, match=r"t\.toml.*bogus"):
        load_track_config(path)
