"""Publishing to a Hub repository, served by a loopback stand-in for the Hub's API (tests/io/hub_server.py):
the files and the model card that arrive, and the refusals before anything is sent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import saekit
from saekit.cli.main import main
from saekit.errors import ArtifactError
from saekit.io.publish import model_card, push_to_hub
from tests.io.hub_server import FakeHub, folder_files


def trained(seed: int = 0) -> saekit.SAE:
    sae = saekit.build_sae("topk", d_in=8, d_sae=16, k=2, seed=seed)
    sae.metadata = {"model": "HuggingFaceTB/SmolLM2-135M", "site": f"layers.{seed}.resid_post"}
    sae.provenance = {"tokens": 4096, "data": {"kind": "model", "corpus": "sotu"}, "final_metrics": {"mse": 0.25, "l0": 2.0}}
    return sae


def test_a_suite_arrives_whole_with_its_model_card(tmp_path: Path) -> None:
    suite = saekit.save_suite({"a": trained(), "b": trained(1)}, tmp_path / "suite")
    (tmp_path / "suite" / "notes.txt").write_text("private")  # not part of the suite: stays home
    before = folder_files(suite)
    with FakeHub() as hub:
        published = push_to_hub(suite, "me/smol-saes", private=True, endpoint=hub.url, token="hf_test")
    assert hub.repos == [{"name": "smol-saes", "organization": "me", "visibility": "private"}]
    assert hub.requests == [
        "POST /api/repos/create", "POST /api/validate-yaml", "POST /api/models/me/smol-saes/preupload/main",
        "POST /api/models/me/smol-saes/commit/main",
    ]  # fmt: skip
    sent = {k: v for k, v in hub.files.items() if k != "README.md"}
    assert sent == {k: v for k, v in before.items() if k != "notes.txt"}
    assert published.files == tuple(hub.files) and published.url.endswith("/commit/" + "0123456789abcdef0123456789abcdef01234567")
    card = hub.files["README.md"].decode()
    header = yaml.safe_load(card.split("---")[1])
    assert header["library_name"] == "saekit" and header["base_model"] == "HuggingFaceTB/SmolLM2-135M"
    assert 'saekit.load_suite("hf://me/smol-saes")' in card
    assert "| a | 4096 | kind=model, corpus=sotu | 0.25 |" in card and "layers.1.resid\\_post" in card
    assert folder_files(suite) == before  # nothing written into the user's folder


def test_one_sae_folder_is_published(tmp_path: Path) -> None:
    folder = saekit.save_sae(trained(), tmp_path / "one")
    with FakeHub() as hub:
        push_to_hub(folder, "me/one", endpoint=hub.url, token="hf_test")
    assert sorted(hub.files) == ["README.md", "cfg.json", "provenance.json", "sae_weights.safetensors"]
    x = torch.randn(3, 8)
    assert torch.equal(saekit.load_sae(folder).encode(x), trained().encode(x))


def test_text_from_the_files_is_escaped_in_the_card(tmp_path: Path) -> None:
    sae = trained()
    sae.metadata = {"model": "<script>alert(1)</script>\n---\nlibrary_name: evil", "site": "x|y"}
    card = model_card(saekit.save_sae(sae, tmp_path / "one"), "me/one")
    assert "<script>" not in card and "&lt;script&gt;" in card and "x\\|y" in card
    assert yaml.safe_load(card.split("---")[1]) == {"library_name": "saekit", "tags": ["saekit", "sparse-autoencoder", "interpretability"]}


def test_refusals_come_before_anything_is_sent(tmp_path: Path) -> None:
    with FakeHub() as hub:
        with pytest.raises(ArtifactError, match=r"neither an SAE folder.*nor a suite"):
            push_to_hub(tmp_path, "me/x", endpoint=hub.url, token="t")
        with pytest.raises(ArtifactError, match=r"repository id 'not a repo' must be owner/name"):
            push_to_hub(tmp_path, "not a repo", endpoint=hub.url, token="t")
        folder = saekit.save_sae(trained(), tmp_path / "one")
        (folder / "provenance.json").unlink()
        (folder / "provenance.json").symlink_to(tmp_path / "secret.json")
        (tmp_path / "secret.json").write_text("{}")
        with pytest.raises(ArtifactError, match=r"refusing to publish .*provenance.json: it is a symbolic link"):
            push_to_hub(folder, "me/x", endpoint=hub.url, token="t")
    assert hub.requests == []


def test_a_refusal_by_the_hub_is_named(tmp_path: Path) -> None:
    folder = saekit.save_sae(trained(), tmp_path / "one")
    with FakeHub(fail_create=401) as hub, pytest.raises(ArtifactError, match=r"cannot publish .*one to me/x: .*401"):
        push_to_hub(folder, "me/x", endpoint=hub.url, token="bad")


def test_no_server_is_a_named_error(tmp_path: Path) -> None:
    folder = saekit.save_sae(trained(), tmp_path / "one")
    with FakeHub() as hub:
        url = hub.url
    with pytest.raises(ArtifactError, match=r"cannot publish .* to me/x"):
        push_to_hub(folder, "me/x", endpoint=url, token="t")


def test_hub_push_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from huggingface_hub import constants

    folder = saekit.save_sae(trained(), tmp_path / "one")
    with FakeHub() as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_test")
        assert main(["hub", "push", str(folder), "me/one"]) == 0
    assert "README.md" in hub.files and "4 files published to me/one" in capsys.readouterr().out
