"""`saekit interpret` against a stub endpoint on 127.0.0.1, on an SAE whose browser cache is already
there (so no model runs): results written, progress shown, failures reported as saekit errors."""

import pytest

import saekit
from saekit.browser.explanations import FILE, read_explanations
from saekit.browser.store import save_data
from saekit.cli.main import main
from tests.browser.browser_helpers import tiny_data
from tests.interpret.chat_server import Reply, StubChat, chat_reply


@pytest.fixture
def sae_folder(tmp_path):
    folder = saekit.save_sae(saekit.build_sae("relu", d_in=5, d_sae=6, seed=0), tmp_path / "sae")
    save_data(folder, tiny_data(d_sae=6), "any key: an existing cache is used whatever made it")
    return folder


def test_interpret_writes_the_explanations_beside_the_sae(sae_folder, capsys):
    with StubChat(lambda body: chat_reply("Explanation: tokens\n[1, 0, 1, 0, 1]")) as stub:
        assert main(["interpret", str(sae_folder), "--endpoint", stub.url, "--model", "stub", "--latents", "0-2,4"]) == 0
    saved = read_explanations(sae_folder, 6)
    assert set(saved.latents) | set(saved.failed) == {0, 1, 2, 4} and saved.model == "stub"
    assert "explained, " in capsys.readouterr().out and stub.requests


def test_a_refusing_endpoint_is_a_one_line_error(sae_folder, capsys, monkeypatch):
    monkeypatch.setenv("STUB_KEY", "sk-secret")
    with StubChat(lambda body: Reply(401, b'{"error": "bad key"}')) as stub:
        code = main(["interpret", str(sae_folder), "--endpoint", stub.url, "--model", "m", "--api-key-env", "STUB_KEY"])
    err = capsys.readouterr().err
    assert code == 2 and "saekit interpret: error:" in err and "HTTP 401" in err and "sk-secret" not in err
    assert (sae_folder / FILE).exists()  # what there was to save (nothing explained) is saved


@pytest.mark.parametrize("latents", ["a-b", "5-2", "-1", "0-99999999999"])
def test_impossible_latent_ranges_are_refused_by_argparse(sae_folder, latents, capsys):
    with pytest.raises(SystemExit):
        main(["interpret", str(sae_folder), "--endpoint", "http://127.0.0.1:1/v1", "--model", "m", "--latents", latents])
    assert "--latents" in capsys.readouterr().err


def test_an_endpoint_that_is_not_a_url_is_a_config_error(sae_folder, capsys):
    assert main(["interpret", str(sae_folder), "--endpoint", "localhost:8080", "--model", "m"]) == 2
    assert "is not an http(s) URL" in capsys.readouterr().err
