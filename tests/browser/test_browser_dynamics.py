"""The browser given a series' dynamics (saekit track's OUT/dynamics/<name>): the store files of the
latent page carry each latent's drift and formation curves, formation checkpoint and token purity,
served and exported alike (test_browser_e2e.py draws them in Chromium); dynamics
of another SAE (latent count, site, name) and malformed dynamics folders are refused by name."""

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from browser_helpers import tiny_dynamics, tiny_setup

from saekit.browser import build_browser
from saekit.browser.dynamics import load_dynamics
from saekit.browser.page_data import store_files
from saekit.cli.main import main
from saekit.errors import ArtifactError, ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(suite, config, the L1-relu dynamics folder) with every browser cache computed."""
    root = tmp_path_factory.mktemp("dynamics")
    suite, cfg = tiny_setup(root)
    build_browser(suite, cfg, progress=False)
    folder = tiny_dynamics("L1-relu", "layers.1.resid_post").save(root / "dynamics" / "L1-relu")
    return suite, cfg, folder


def records(files: dict[str, bytes], name: str) -> tuple[dict, np.ndarray]:
    """(the extra panel's entry of page.json, its records) of the store file ``name``, read by the
    field table the page's script reads it by."""
    extra = next(x for x in json.loads(files["page.json"])["extras"] if x["file"] == name)
    dtype = np.dtype([(f, "<" + kind, (count,)) for f, kind, _, count in extra["fields"]])
    assert dtype.itemsize == extra["record_size"]
    return extra, np.frombuffer(files[name], dtype=dtype)


def test_the_store_files_carry_each_latents_curves_formation_and_purity(built):
    suite, cfg, folder = built
    browser = build_browser(suite, cfg, dynamics=folder, progress=False)
    assert browser.saes["L0-topk"].dynamics is None  # a suite: the folder goes to the SAE of its name
    assert json.loads(store_files("t", browser.saes["L0-topk"])["page.json"])["extras"] == []
    extra, got = records(store_files("t", browser.saes["L1-relu"]), "dynamics.bin")
    assert extra["kind"] == "dynamics" and extra["labels"] == ["step-0", "step-200", "step-1000"]
    assert (extra["name"], extra["site"], extra["formed_fraction"]) == ("L1-relu", "layers.1.resid_post", 0.5)
    assert got["formation"][3, 0] == 2 and got["formation"][4, 0] == -1 and got["token_purity"][3, 0] == 0.75
    assert got["drift_to_final"][3, 0] == pytest.approx(3 / 24)  # latent 3 at the first checkpoint
    assert np.isnan(got["progress_cosine"][5]).all() and got["alive"][5, 0] == 0 and got["alive"][4, 0] == 1


def test_the_cli_exports_the_dynamics_beside_the_page(built, tmp_path):
    suite, cfg, folder = built
    argv = ["browse", str(suite / "L1-relu"), "--model", cfg.model, "--corpus", cfg.corpus, "--tokens", str(cfg.n_tokens),
            "--context-size", "16", "--skip-positions", "1", "--dynamics", str(folder), "--export", str(tmp_path / "site")]  # fmt: skip
    assert main(argv) == 0
    exported = {p.name: p.read_bytes() for p in (tmp_path / "site" / "L1-relu").iterdir()}
    _, got = records(exported, "dynamics.bin")
    assert got["formation"][2, 0] == 1 and got["token_purity"][2, 0] == 0.5


def test_dynamics_of_another_latent_count_are_refused_before_computing(built, tmp_path, capsys):
    suite, cfg, _ = built
    folder = tiny_dynamics("L1-relu", "layers.1.resid_post", d_sae=20).save(tmp_path / "d")
    with pytest.raises(ConfigError, match=f"dynamics folder {re.escape(str(folder))} has 20 latents, but SAE L1-relu has d_sae=24"):
        build_browser(suite, cfg, dynamics=folder, progress=False)
    # No such model: computing would fail on it; the dynamics are refused first.
    argv = ["browse", str(suite / "L1-relu"), "--model", str(tmp_path / "no-model"), "--rebuild", "--dynamics", str(folder)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "has 20 latents, but SAE L1-relu has d_sae=24" in err and "Traceback" not in err


def test_the_cached_data_is_checked_too_whatever_cfg_json_declares(built, tmp_path):
    """A cfg.json that does not say d_sae cannot let dynamics of another size reach the pages."""
    suite, cfg, _ = built
    folder = tiny_dynamics("L1-relu", "layers.1.resid_post", d_sae=30).save(tmp_path / "d")
    copy = tmp_path / "L1-relu"
    copy.mkdir()
    for f in (suite / "L1-relu").rglob("*"):
        if f.is_file():
            (copy / f.relative_to(suite / "L1-relu")).parent.mkdir(parents=True, exist_ok=True)
            (copy / f.relative_to(suite / "L1-relu")).write_bytes(f.read_bytes())
    raw = json.loads((copy / "cfg.json").read_text())
    (copy / "cfg.json").write_text(json.dumps({**raw, "d_sae": "many", "metadata": {}}))
    with pytest.raises(ConfigError, match="has 30 latents, but SAE L1-relu has d_sae=24"):
        build_browser(copy, cfg, dynamics=folder, progress=False)  # the cache is reused: its key is the weights'


def test_dynamics_of_another_site_are_refused(built, tmp_path):
    suite, cfg, _ = built
    folder = tiny_dynamics("L1-relu", "layers.0.resid_post").save(tmp_path / "d")
    with pytest.raises(ConfigError, match="measured at site 'layers.0.resid_post', but SAE L1-relu reads 'layers.1.resid_post'"):
        build_browser(suite, cfg, dynamics=folder, progress=False)


def test_a_suite_takes_dynamics_by_name_once_each(built, tmp_path):
    suite, cfg, folder = built
    other = tiny_dynamics("L9-other").save(tmp_path / "other")
    with pytest.raises(ConfigError, match=r"holds the dynamics of SAE 'L9-other', which is not one of the browser's SAEs \(L0-topk, L1-relu\)"):
        build_browser(suite, cfg, dynamics=other, progress=False)
    with pytest.raises(ConfigError, match="two dynamics folders for SAE L1-relu"):
        build_browser(suite, cfg, dynamics=[folder, folder], progress=False)
    both = build_browser(suite, cfg, dynamics=[folder, tiny_dynamics().save(tmp_path / "L0")], progress=False)
    assert [d.dynamics.name for d in both.saes.values() if d.dynamics] == ["L0-topk", "L1-relu"]


def spoil(**changes):
    return lambda d: dataclasses.replace(d, **changes)


@pytest.mark.parametrize(
    "change, words",
    [
        (spoil(formation=torch.full((24,), 3)), "formation holds values outside -1..2"),
        (spoil(formation=torch.zeros(24)), "formation is stored as torch.float32, not as integer"),
        (spoil(alive=torch.ones(24)), "alive is stored as torch.float32, not as bool"),
        (spoil(drift_to_final=torch.zeros(2, 24)), r"drift_to_final has shape \[2, 24\], expected \[3, 24\]"),
        (spoil(drift_to_final=torch.zeros(24)), r"drift_to_final has shape \[24\], not \[checkpoints, latents\]"),
        (spoil(progress_wjaccard=torch.zeros(3, 23)), r"progress_wjaccard has shape \[3, 23\], expected \[3, 24\]"),
        (spoil(token_purity=torch.zeros(25)), r"token_purity has shape \[25\], expected \[24\]"),
        (spoil(checkpoints=["a", 3, "c"]), "checkpoints must be a non-empty list of labels"),
        (spoil(checkpoints=[]), "checkpoints must be a non-empty list of labels"),
        (spoil(steps=[0, 1]), r"steps must hold one integer or null per checkpoint \(3\)"),
        (spoil(steps=[0, True, 2]), "steps must hold one integer or null per checkpoint"),
        (spoil(site=["x"]), "name and site must be strings"),
    ],
)  # fmt: skip
def test_a_malformed_dynamics_folder_is_refused_by_name(tmp_path, change, words):
    folder = change(tiny_dynamics()).save(tmp_path / "d")
    with pytest.raises(ArtifactError, match=words) as caught:
        load_dynamics(folder)
    assert f"dynamics folder {folder}" in str(caught.value)


def test_a_missing_or_foreign_folder_is_refused_by_name(tmp_path):
    with pytest.raises(ArtifactError, match=f"dynamics folder {re.escape(str(tmp_path / 'no'))} does not exist"):
        load_dynamics(tmp_path / "no")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match=f"dynamics folder {re.escape(str(tmp_path / 'file'))} is not a folder"):
        load_dynamics(tmp_path / "file")
    with pytest.raises(ArtifactError, match="result.json is missing"):
        load_dynamics(tmp_path)
    spoil(token_purity=[0.5] * 24)(tiny_dynamics()).save(tmp_path / "list")
    with pytest.raises(ArtifactError, match="field 'token_purity' should be a tensor"):
        load_dynamics(tmp_path / "list")
    tiny_dynamics().save(tmp_path / "d")
    (tmp_path / "d" / "result.json").write_text("{")
    with pytest.raises(ArtifactError, match="result.json"):
        load_dynamics(tmp_path / "d")
