import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saekit.cli.main import build_parser, main
from saekit.io import load_sae
from saekit.sae import list_architectures

CONFIG = """
out = "{out}"
[data]
kind = "synthetic"
d = 16
n_features = 48
mean_active = 3
[train]
steps = {steps}
batch_size = 64
norm_estimation_tokens = 64
progress = false
log_every = 1
{extra}
[[sae]]
architecture = "topk"
d_sae = 32
k = 4
name = "small-topk"
[[sae]]
architecture = "jumprelu"
d_sae = 32
lr = 0.001
"""


def _write(tmp_path: Path, steps: int = 6, extra: str = "") -> Path:
    path = tmp_path / "run.toml"
    path.write_text(CONFIG.format(out=tmp_path / "out", steps=steps, extra=extra))
    return path


def test_ls_lists_every_architecture_with_its_hyperparameters(capsys):
    assert main(["ls"]) == 0
    text = capsys.readouterr().out
    for name in list_architectures():
        assert f"\n{name}  (SAELens:" in "\n" + text
    assert "k = 32    Active latents per token: exactly k" in text
    assert "mutual_choice  = batch_topk" in text


def test_train_writes_loadable_saes_and_a_log(tmp_path, capsys):
    assert main(["train", str(_write(tmp_path)), "--set", "sae.0.k=3"]) == 0
    out = tmp_path / "out"
    sae = load_sae(out / "saes" / "small-topk")
    assert sae.architecture == "topk" and sae.cfg.k == 3 and sae.site == "synthetic"
    assert load_sae(out / "saes" / "01-jumprelu").architecture == "jumprelu"
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 12  # 6 steps x 2 SAEs
    assert json.loads((out / "config.json").read_text())["sae"][0]["k"] == 3
    assert "small-topk" in capsys.readouterr().out


def test_train_refuses_to_overwrite_a_run_without_resume(tmp_path, capsys):
    config = _write(tmp_path, steps=2)
    assert main(["train", str(config)]) == 0
    assert main(["train", str(config)]) == 2
    assert "already holds a run (checkpoint.safetensors); resume it (--resume" in capsys.readouterr().err


def test_a_refused_resume_leaves_the_output_folder_as_it_was(tmp_path, capsys):
    """config.json used to be overwritten with the refused config before the run's checks."""
    from write_faults import snapshot

    config = _write(tmp_path, steps=2)
    assert main(["train", str(config)]) == 0
    before = snapshot(tmp_path / "out")
    assert main(["train", str(config), "--resume", "--set", "sae.0.k=2"]) == 2
    assert "different SAEs, sites, data or training settings" in capsys.readouterr().err
    assert snapshot(tmp_path / "out") == before


def test_a_write_the_disk_refuses_is_named(tmp_path, capsys):
    """The checkpoint cannot be written (a file-size limit: the portable stand-in for a full disk)."""
    from write_faults import file_size_limit, hidden_leftovers

    with file_size_limit(8192):
        assert main(["train", str(_write(tmp_path, steps=2))]) == 2
    out = tmp_path / "out"
    assert f"saekit train: error: cannot write {out / 'checkpoint.safetensors'}: File too large (EFBIG)" in capsys.readouterr().err
    assert hidden_leftovers(out) == []


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.stepz=3", "unknown key 'stepz'"),
        ("sae.0.kk=3", "sae.0: topk: unknown key 'kk'"),
        ("sae.0.architecture=nope", "unknown architecture 'nope'"),
        ("data.kind=weird", "'kind' must be one of"),
        ("sae.5.k=3", "sae.5 does not exist"),
    ],
)
def test_bad_config_is_named(tmp_path, capsys, override, message):
    assert main(["train", str(_write(tmp_path)), "--set", override]) == 2
    assert message in capsys.readouterr().err


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    """Kill -9 a real `saekit train` process after its first checkpoint, resume it, and compare."""
    steps, every = 300, 40
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = _write(tmp_path, steps=steps)
    subprocess.run([sys.executable, "-m", "saekit", "train", str(reference), "--out", str(tmp_path / "ref")], check=True, env=env, capture_output=True)

    config = _write(tmp_path, steps=steps, extra=f"checkpoint_every = {every}")
    cmd = [sys.executable, "-m", "saekit", "train", str(config), "--out", str(tmp_path / "run")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "run" / "checkpoint.safetensors"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "the run ended before writing its first checkpoint"
    assert not (tmp_path / "run" / "saes").exists(), "the run finished before it was killed"

    subprocess.run(cmd + ["--resume"], check=True, env=env, capture_output=True)
    for name in ("small-topk", "01-jumprelu"):
        a = load_file(tmp_path / "ref" / "saes" / name / "sae_weights.safetensors")
        b = load_file(tmp_path / "run" / "saes" / name / "sae_weights.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)


def test_yaml_config_works_like_toml(tmp_path):
    import yaml

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "out": str(tmp_path / "out"),
        "data": {"kind": "synthetic", "d": 16, "n_features": 48, "mean_active": 3},
        "train": {"steps": 2, "batch_size": 64, "norm_estimation_tokens": 64, "progress": False},
        "sae": [{"architecture": "gated", "d_sae": 32}],
    }))  # fmt: skip
    assert main(["train", str(config)]) == 0
    assert load_sae(tmp_path / "out" / "saes" / "00-gated").architecture == "gated"


def test_optional_loggers_that_are_not_installed_are_named(tmp_path, capsys):
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        assert main(["train", str(_write(tmp_path)), "--set", "train.tensorboard=true"]) == 2
        assert "tensorboard package is not installed" in capsys.readouterr().err
    else:
        pytest.skip("tensorboard is installed here")


def test_eval_reports_metrics_of_a_suite_on_an_activation_file(tmp_path, capsys):
    import numpy as np

    from saekit.eval.evaluate import evaluate
    from saekit.sources.synthetic import SyntheticSource

    assert main(["train", str(_write(tmp_path, steps=3))]) == 0
    acts = SyntheticSource(d=16, n_features=48, mean_active=3).sample(500, seed=4).numpy()
    np.save(tmp_path / "acts.npy", acts)
    assert main(["eval", str(tmp_path / "out" / "saes"), "--data", str(tmp_path / "acts.npy"), "--json", str(tmp_path / "m.json")]) == 0
    rows = {row["name"]: row for row in json.loads((tmp_path / "m.json").read_text())}
    assert set(rows) == {"small-topk", "01-jumprelu"}
    expected = evaluate(load_sae(tmp_path / "out" / "saes" / "small-topk"), acts)
    assert rows["small-topk"]["fvu"] == pytest.approx(expected["fvu"]) and rows["small-topk"]["tokens"] == 500
    assert "small-topk" in capsys.readouterr().out
    # One SAE folder works too.
    assert main(["eval", str(tmp_path / "out" / "saes" / "small-topk"), "--data", str(tmp_path / "acts.npy")]) == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["cache", "--out", "c", "--tokens", "-5"], "argument --tokens: expected a positive integer, got -5"),
        (["cache", "--out", "c", "--shard-tokens", "0"], "argument --shard-tokens: expected a positive integer, got 0"),
        (["cache", "--out", "c", "--seed", str(2**70)], "argument --seed: expected a 64-bit integer, got 1180591620717411303424"),
        (["cache", "--out", "c", "--skip-positions", "-1"], "argument --skip-positions: expected an integer of 0 or more, got -1"),
        (["demo", "--synthetic", "--steps", "abc"], "argument --steps: expected a positive integer, got 'abc'"),
        (["browse", "s", "--port", "70000"], "argument --port: expected a port number in 0..65535, got 70000"),
        (["browse", "s", "--tokens", "0"], "argument --tokens: expected a positive integer, got 0"),
        (["browse", "s", "--skip-positions", "-1"], "argument --skip-positions: expected an integer of 0 or more, got -1"),
        (["analyse", "sae-match", "a", "--ce-contexts", "-2", "--out", "o"], "argument --ce-contexts: expected an integer of 0 or more, got -2"),
    ],
)
def test_bad_counts_and_seeds_are_usage_errors_naming_the_option(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)  # parsing only: nothing runs, whatever the outcome
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_bad_override_is_an_error_naming_the_key(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text(CONFIG.format(out=tmp_path / "run", steps=2, extra=""))
    assert main(["train", str(config), "--set", "train.steps.x=1"]) == 2
    assert "saekit train: error: --set 'train.steps.x=1': train.steps is 2, not a table" in capsys.readouterr().err


def test_a_run_that_diverges_ends_with_a_named_error_not_a_traceback(tmp_path, capsys):
    assert main(["train", str(_write(tmp_path, steps=50)), "--set", "sae.0.lr=1e6", "--set", "sae.1.lr=1e6"]) == 2
    assert "diverged at step" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["data", "sites", "latents", "fsdp"])
def test_train_on_two_processes_saves_what_one_process_saves(tmp_path, monkeypatch, mode):
    """`saekit train CONFIG --nproc 2` (torchrun --standalone, gloo on the CPU), against one process."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = _write(tmp_path, steps=6)
    assert main(["train", str(config), "--out", str(tmp_path / "one")]) == 0
    assert main(["train", str(config), "--out", str(tmp_path / "two"), "--nproc", "2", "--set", f"train.parallel={mode}"]) == 0
    for name in ("small-topk", "01-jumprelu"):
        a = load_file(tmp_path / "one" / "saes" / name / "sae_weights.safetensors")
        b = load_file(tmp_path / "two" / "saes" / name / "sae_weights.safetensors")
        for key in a:
            assert float((a[key] - b[key]).norm() / a[key].norm().clamp_min(1e-6)) <= 1e-5, (name, key)
    provenance = json.loads((tmp_path / "two" / "saes" / "small-topk" / "provenance.json").read_text())
    assert provenance["distributed"] == {"mode": mode, "world_size": 2}


def _parsers(parser):
    """``parser`` and every subcommand parser below it."""
    import argparse

    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _parsers(child)


def test_every_command_renders_its_help():
    # argparse formats help with %: a literal "1%" in a field's documentation crashed `--help`.
    rendered = [p.format_help() for p in _parsers(build_parser())]
    assert len(rendered) > 10
    assert any("1% of games" in text for text in rendered)
