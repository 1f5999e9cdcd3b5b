"""Hub references read through a Hugging Face cache laid out as huggingface_hub lays it, offline; and
what SAELens's registry references need."""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from huggingface_hub import constants as hf_constants

import saekit
from saekit.cli.main import main
from saekit.errors import ArtifactError, ConfigError
from saekit.io.convert import read_any
from saekit.io.hub import HubRef, download, parse_ref
from tests.io.hub_server import COMMIT, cache_repo, folder_files

REPO = "someone/tiny-saes"


def tiny(k: int = 2, seed: int = 0) -> saekit.SAE:
    sae = saekit.build_sae("topk", d_in=8, d_sae=16, k=k, seed=seed)
    sae.metadata = {"model": "HuggingFaceTB/SmolLM2-135M", "site": f"layers.{seed}.resid_post"}
    return sae


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """huggingface_hub pointed at an empty cache under tmp_path, with downloads off (HF_HUB_OFFLINE=1
    as read at its import)."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return cache


def test_parse_ref_reads_repository_folder_and_revision() -> None:
    assert parse_ref("hf://a/b") == HubRef("a/b", "", None)
    assert parse_ref("hf://a/b/layer_3/topk@v1.0") == HubRef("a/b", "layer_3/topk", "v1.0")
    assert str(parse_ref("hf://a/b/x@refs/pr/1")) == "hf://a/b/x@refs/pr/1"


@pytest.mark.parametrize(
    ("ref", "words"),
    [
        ("hf://justone", "owner/name"),
        ("hf://a/b/../../etc", "plain path"),
        ("hf://a/b//c", "plain path"),
        ("hf://a/b/c@", "revision"),
        ("hf://a/b@../x", "revision"),
        ("hf://../b", "owner/name"),
    ],
)
def test_malformed_refs_are_config_errors(ref: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_ref(ref)


def test_load_sae_and_suite_from_the_cache_offline(tmp_path: Path, offline_cache: Path) -> None:
    one = saekit.save_sae(tiny(), tmp_path / "one")
    suite = saekit.save_suite({"a": tiny(seed=1), "b": tiny(k=3, seed=2)}, tmp_path / "suite")
    files = {f"single/{p}": b for p, b in folder_files(one).items()} | {f"suite/{p}": b for p, b in folder_files(suite).items()}
    cache_repo(offline_cache, REPO, files)
    assert [r.repo_id for r in huggingface_hub.scan_cache_dir(offline_cache).repos] == [REPO]  # its own reader agrees

    sae = saekit.load_sae(f"hf://{REPO}/single")
    x = torch.randn(5, 8)
    assert torch.equal(sae.encode(x), saekit.load_sae(one).encode(x))
    assert sae.site == "layers.0.resid_post"
    loaded = saekit.load_suite(f"hf://{REPO}/suite@main")
    assert list(loaded) == ["a", "b"] and loaded["b"].cfg.k == 3
    assert set(read_any(f"hf://{REPO}/suite")) == {"a", "b"}
    assert download(HubRef(REPO, "suite", COMMIT)).name == "suite"  # a commit needs no ref file


def test_the_repository_root_is_a_folder_too(tmp_path: Path, offline_cache: Path) -> None:
    cache_repo(offline_cache, REPO, folder_files(saekit.save_sae(tiny(), tmp_path / "one")))
    assert saekit.load_sae(f"hf://{REPO}").d_sae == 16


def test_a_repository_missing_from_the_cache_offline_says_how_to_fetch_it(offline_cache: Path) -> None:
    with pytest.raises(ArtifactError, match=r"not in the Hugging Face cache.*HF_HUB_OFFLINE.*saekit hub pull hf://a/b/x"):
        saekit.load_sae("hf://a/b/x")


def test_a_missing_folder_or_revision_is_named(tmp_path: Path, offline_cache: Path) -> None:
    cache_repo(offline_cache, REPO, folder_files(saekit.save_sae(tiny(), tmp_path / "one")))
    with pytest.raises(ArtifactError, match=r"has no folder 'layer_9'"):
        saekit.load_sae(f"hf://{REPO}/layer_9")
    with pytest.raises(ArtifactError, match=r"not in the Hugging Face cache.*hf download someone/tiny-saes --revision v2"):
        saekit.load_sae(f"hf://{REPO}@v2")


def test_a_lost_blob_is_named(tmp_path: Path, offline_cache: Path) -> None:
    snapshot = cache_repo(offline_cache, REPO, folder_files(saekit.save_sae(tiny(), tmp_path / "one")))
    (snapshot / "sae_weights.safetensors").resolve().unlink()
    with pytest.raises(ArtifactError, match=r"sae_weights.safetensors is a broken link"):
        saekit.load_sae(f"hf://{REPO}")


def test_a_folder_of_no_known_layout_is_named(offline_cache: Path) -> None:
    cache_repo(offline_cache, REPO, {"notes/readme.txt": b"hello"})
    with pytest.raises(ArtifactError, match=r"no SAE found at .*notes.*readme.txt.*Layouts saekit reads"):
        saekit.load_sae(f"hf://{REPO}/notes")


def test_a_file_is_not_a_folder(offline_cache: Path) -> None:
    cache_repo(offline_cache, REPO, {"notes/readme.txt": b"hello"})
    with pytest.raises(ArtifactError, match=r"has no folder 'notes/readme.txt'"):
        saekit.load_sae(f"hf://{REPO}/notes/readme.txt")


@pytest.mark.skipif(importlib.util.find_spec("sae_lens") is not None, reason="sae_lens is installed")
def test_a_saelens_reference_without_saelens_names_the_package() -> None:
    with pytest.raises(ConfigError, match=r"sae-lens package.*pip install sae-lens"):
        saekit.load_sae("saelens://gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71")


def test_a_saelens_reference_needs_a_release_and_an_id() -> None:
    with pytest.raises(ConfigError, match=r"saelens://RELEASE/SAE_ID"):
        parse_ref("saelens://gpt2-small-res-jb")


def test_saelens_registry_reference_resolves_to_its_hub_folder() -> None:
    pytest.importorskip("sae_lens")
    assert parse_ref("saelens://gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71") == HubRef(
        "google/gemma-scope-2b-pt-res", "layer_20/width_16k/average_l0_71", None
    )
    with pytest.raises(ConfigError, match=r"no SAE 'nope'"):
        parse_ref("saelens://gpt2-small-res-jb/nope")
    # Trained on TransformerLens's centred GPT-2: its codes differ on the model saekit runs.
    with pytest.raises(ArtifactError, match=r"changes this SAE at load time \(model_from_pretrained_kwargs\)"):
        parse_ref("saelens://gpt2-small-res-jb/blocks.8.hook_resid_pre")
    with pytest.raises(ConfigError, match=r"no release 'gpt2-small-res-jbx'"):
        parse_ref("saelens://gpt2-small-res-jbx/blocks.8.hook_resid_pre")
    with pytest.raises(ArtifactError, match=r"'goodfire' converter, a layout saekit has no reader for"):
        parse_ref("saelens://goodfire-llama-3.1-8b-instruct/layer_19")
    assert parse_ref("saelens://gpt2-small-attn-out-v5-32k/blocks.0.hook_attn_out").repo_id  # dataset_path: no change


def cache_gemma_scope(offline_cache: Path) -> np.ndarray:
    """A tiny Gemma Scope params.npz where the Hub keeps layer 20's 16k SAE; returns its W_enc."""
    g = np.random.default_rng(0)
    arrays = {k: g.normal(size=s).astype(np.float32) for k, s in {"W_enc": (8, 16), "W_dec": (16, 8), "b_enc": 16, "b_dec": 8}.items()}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, threshold=np.full(16, 0.1, np.float32))
    cache_repo(offline_cache, "google/gemma-scope-2b-pt-res", {"layer_20/width_16k/average_l0_71/params.npz": buffer.getvalue()})
    return arrays["W_enc"]


def test_a_gemma_scope_folder_keeps_its_site_read_from_the_hub_path(offline_cache: Path) -> None:
    """The cache's files are links into blobs/: the site comes from the path as named, not the blob's."""
    w_enc = cache_gemma_scope(offline_cache)
    sae = saekit.load_sae("hf://google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71")
    assert sae.architecture == "jumprelu" and sae.site == "layers.20.resid_post" and sae.metadata["model"] == "google/gemma-2-2b"
    assert torch.equal(sae.W_enc.detach(), torch.from_numpy(w_enc))


def test_a_saelens_release_loads_from_the_cache(offline_cache: Path) -> None:
    pytest.importorskip("sae_lens")
    w_enc = cache_gemma_scope(offline_cache)
    sae = saekit.load_sae("saelens://gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71")
    assert sae.site == "layers.20.resid_post" and torch.equal(sae.W_enc.detach(), torch.from_numpy(w_enc))


def test_hub_pull_writes_a_saekit_folder(tmp_path: Path, offline_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache_repo(offline_cache, REPO, {f"s/{p}": b for p, b in folder_files(saekit.save_suite([tiny(), tiny(seed=1)], tmp_path / "x")).items()})
    assert main(["hub", "pull", f"hf://{REPO}/s", str(tmp_path / "out")]) == 0
    assert len(saekit.load_suite(tmp_path / "out")) == 2
    assert main(["hub", "pull", str(tmp_path / "x"), str(tmp_path / "out2")]) == 2
    assert "not a Hub reference" in capsys.readouterr().err


@pytest.mark.slow
def test_hub_pull_honours_hf_home_and_offline_mode(tmp_path: Path) -> None:
    """The environment variables as a user sets them, read by huggingface_hub in a fresh process."""
    cache_repo(tmp_path / "home" / "hub", REPO, {f"s/{p}": b for p, b in folder_files(saekit.save_sae(tiny(), tmp_path / "one")).items()})
    env = {**os.environ, "HF_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    run = subprocess.run(
        [sys.executable, "-m", "saekit", "hub", "pull", f"hf://{REPO}/s", str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert saekit.load_sae(tmp_path / "out").d_sae == 16
    again = subprocess.run(
        [sys.executable, "-m", "saekit", "hub", "pull", "hf://someone/absent", str(tmp_path / "out2")],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert again.returncode == 2 and "not in the Hugging Face cache" in again.stderr and str(tmp_path / "home") in again.stderr
