"""Random kill -9s of real `saekit train` and `saekit cache` processes, each resumed, until the job
ends: the result must equal an uninterrupted run's bit for bit. Kills land anywhere: while loading,
between steps, during checkpoint, metrics, shard or manifest writes."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.tiny_lm import write_tiny_corpus, write_tiny_model

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
KILLS = 8

CONFIG = """
out = "{out}"
[data]
kind = "synthetic"
d = 16
n_features = 48
mean_active = 3
[train]
steps = 1500
batch_size = 64
norm_estimation_tokens = 64
checkpoint_every = 7
log_every = 3
progress = false
[[sae]]
architecture = "topk"
d_sae = 32
k = 4
[[sae]]
architecture = "jumprelu"
d_sae = 32
lr = 0.001
[[sae]]
architecture = "batch_topk"
d_sae = 48
k = 3
"""


def _kill_until_done(cmd: list[str], started: Path, done: Path, seed: int, max_delay: float) -> int:
    """Run ``cmd`` (which resumes), kill it -9 at a random moment once ``started`` exists, up to
    :data:`KILLS` times; then let it finish. Returns the number of kills that landed."""
    rng, kills = random.Random(seed), 0
    while kills < KILLS and not done.exists():
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while not started.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, max_delay))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        _, err = proc.communicate()
        assert proc.returncode in (0, -signal.SIGKILL), err.decode()
    subprocess.run(cmd, env=ENV, check=True, capture_output=True)
    return kills


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_training_killed_at_random_resumes_bit_for_bit(tmp_path):
    reference = tmp_path / "ref.toml"
    reference.write_text(CONFIG.format(out=tmp_path / "ref"))
    subprocess.run([sys.executable, "-m", "saekit", "train", str(reference)], env=ENV, check=True, capture_output=True)

    config = tmp_path / "run.toml"
    config.write_text(CONFIG.format(out=tmp_path / "run"))
    cmd = [sys.executable, "-m", "saekit", "train", str(config), "--resume"]
    kills = _kill_until_done(cmd, tmp_path / "run" / "checkpoint.safetensors", tmp_path / "run" / "saes", seed=0, max_delay=1.5)
    print(f"training: {kills} kills")
    assert kills >= KILLS // 2, "the run ended before most kills could land: lengthen it"

    for sae in sorted(p.name for p in (tmp_path / "ref" / "saes").iterdir() if p.is_dir()):
        a = load_file(tmp_path / "ref" / "saes" / sae / "sae_weights.safetensors")
        b = load_file(tmp_path / "run" / "saes" / sae / "sae_weights.safetensors")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[key], b[key]) for key in a), sae
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == (tmp_path / "ref" / "metrics.jsonl").read_bytes()


def test_caching_killed_at_random_resumes_bit_for_bit(tmp_path):
    write_tiny_model(tmp_path / "model")
    corpus = write_tiny_corpus(tmp_path / "corpus", repeats=200)

    def cmd(out: Path) -> list[str]:
        return [
            sys.executable, "-m", "saekit", "cache", "--out", str(out), "--model", str(tmp_path / "model"),
            "--corpus", str(corpus), "--sites", "layers.*.resid_post", "--context-size", "8", "--shard-tokens", "64",
        ]  # fmt: skip

    subprocess.run(cmd(tmp_path / "ref"), env=ENV, check=True, capture_output=True)
    # Started once the first shard is committed; the cache is never "done" early (resuming a complete
    # cache is a no-op that must leave it as it is).
    run = tmp_path / "run"
    kills = _kill_until_done(cmd(run), run / "manifest.json", tmp_path / "never", seed=1, max_delay=1.0)
    print(f"caching: {kills} kills")
    assert kills >= KILLS // 2, "the cache was written before most kills could land: lengthen it"
    assert _files(tmp_path / "run") == _files(tmp_path / "ref")
