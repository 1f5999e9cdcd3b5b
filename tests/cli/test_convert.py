"""`saekit convert SRC OUT`: other libraries' SAEs written as saekit/SAELens folders (a suite when SRC
holds several), giving the same codes as the source, and errors reported on stderr."""

from __future__ import annotations

import json

import pytest
import torch
from foreign_saes import activations, write_dictionary_learning, write_gemma_scope, write_sparsify

import saekit
from saekit.cli.convert import suite_names
from saekit.cli.main import main
from saekit.errors import ArtifactError
from saekit.io import is_sae_folder
from saekit.io.convert import read_one

pytestmark = pytest.mark.usefixtures("one_thread")

WRITERS = {
    "gemma_scope": lambda folder: write_gemma_scope(folder),
    "sparsify": lambda folder: write_sparsify(folder),
    "dictionary_learning": lambda folder: write_dictionary_learning(folder, "BatchTopKSAE"),
}


@pytest.mark.parametrize("layout", list(WRITERS))
def test_one_sae_becomes_one_folder_with_the_same_codes(tmp_path, capsys, layout):
    WRITERS[layout](tmp_path / "src")
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "out")]) == 0
    assert f"{layout} SAE at" in capsys.readouterr().out
    source, converted = read_one(tmp_path / "src"), saekit.load_sae(tmp_path / "out")
    assert is_sae_folder(tmp_path / "out")
    assert "converted_from" in converted.metadata and converted.provenance["converted_from"]["layout"] == layout
    x = activations()
    assert torch.equal(converted.encode(x), source.encode(x))
    assert torch.equal(converted(x), source(x))
    cfg = json.loads((tmp_path / "out" / "cfg.json").read_text())
    assert cfg["saekit"]["architecture"] == source.architecture
    assert cfg["apply_b_dec_to_input"] == (layout != "gemma_scope")


def test_a_checkpoint_becomes_a_suite(tmp_path, capsys):
    write_sparsify(tmp_path / "run" / "layers.2" / "seed0", seed=0)
    write_sparsify(tmp_path / "run" / "layers.2" / "seed1", seed=1)
    write_sparsify(tmp_path / "run" / "layers.10" / "seed0", seed=2)
    assert main(["convert", str(tmp_path / "run"), str(tmp_path / "suite")]) == 0
    printed = capsys.readouterr().out
    assert "3 SAEs found below" in printed and "| layers.2-seed1 | sparsify | topk | 6 | 20 | layers.2.resid_post |" in printed
    suite = saekit.load_suite(tmp_path / "suite")
    assert list(suite) == ["layers.2-seed0", "layers.2-seed1", "layers.10-seed0"]
    x = activations()
    for name, sae in suite.items():
        assert torch.equal(sae.encode(x), read_one(tmp_path / "run" / name.replace("-", "/")).encode(x))


def test_converting_again_replaces_the_output(tmp_path):
    write_gemma_scope(tmp_path / "a", seed=0)
    write_gemma_scope(tmp_path / "b", seed=1)
    assert main(["convert", str(tmp_path / "a"), str(tmp_path / "out")]) == 0
    assert main(["convert", str(tmp_path / "b"), str(tmp_path / "out")]) == 0
    assert torch.equal(saekit.load_sae(tmp_path / "out").W_enc, read_one(tmp_path / "b").W_enc)


def test_unknown_source_is_an_error_on_stderr(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model.bin").write_bytes(b"x")
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("saekit convert: error: no SAE found at") and "it holds model.bin" in err
    assert not (tmp_path / "out").exists()


def test_output_that_is_not_an_sae_folder_is_not_overwritten(tmp_path, capsys):
    write_gemma_scope(tmp_path / "src")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "out")]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_suite_names_from_paths():
    assert suite_names(["layers.3/seed0", "layer_2/width 16k", ".hidden"]) == ["layers.3-seed0", "layer_2-width_16k", "hidden"]
    with pytest.raises(ArtifactError, match="clashing suite names"):
        suite_names(["a/b", "a-b"])


@pytest.mark.parametrize("layout", list(WRITERS))
def test_saelens_loads_converted_folders_with_the_same_codes(tmp_path, layout):
    sae_lens = pytest.importorskip("sae_lens")
    WRITERS[layout](tmp_path / "src")
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "out")]) == 0
    lens = sae_lens.SAE.load_from_disk(str(tmp_path / "out"))
    source = read_one(tmp_path / "src")
    x = activations()
    with torch.no_grad():
        torch.testing.assert_close(lens.encode(x), source.encode(x))
        torch.testing.assert_close(lens.decode(lens.encode(x)), source(x))
