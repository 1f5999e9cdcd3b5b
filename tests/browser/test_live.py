"""Live text through the tiny model: each token's latents equal the SAE's codes on the model's own
activations; the input is bounded; the server's api/live answers only a JSON POST from this machine
and refuses every malformed request by name, and the CLI's search and Neuronpedia export run on the
same suite."""

import http.client
import json

import pytest
import torch
from browser_helpers import EVIL, tiny_setup

import saekit
from saekit.browser import LiveModel, build_browser, serve_in_thread
from saekit.browser.live import MAX_CHARS, MAX_TOKENS
from saekit.browser.server import MAX_BODY
from saekit.cli.main import main
from saekit.errors import ConfigError
from saekit.sources.hf import site_rows

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    suite, cfg = tiny_setup(root)
    browser = build_browser(suite, cfg, progress=False)
    live = LiveModel.load(suite, model=cfg.model)
    server, _ = serve_in_thread(browser, "127.0.0.1", 0, live=live)
    yield suite, cfg, live, server.server_address[1]
    server.shutdown()
    server.server_close()


def test_each_tokens_latents_are_the_saes_codes_on_the_models_activations(served):
    suite, cfg, live, _ = served
    result = live.run("L1-relu", f"the cat {EVIL} sat", top=3)
    ids = live.loaded.tokenizer(f"the cat {EVIL} sat", add_special_tokens=False)["input_ids"]
    assert [t.text for t in result.tokens] == live.loaded.tokenizer.batch_decode([[i] for i in ids])
    assert EVIL in [t.text for t in result.tokens] and not result.truncated
    sae = saekit.load_sae(suite / "L1-relu")
    bos = live.loaded.bos_token_id
    tokens = torch.tensor([([bos] if bos is not None else []) + ids])
    acts = site_rows(live.loaded, tokens, [sae.require_site()], skip_positions=int(bos is not None), progress=False)
    with torch.no_grad():
        codes = sae.encode(acts[sae.require_site()])
    for token, row in zip(result.tokens, codes):
        values, latents = row.topk(3)
        expected = [(int(j), float(v)) for j, v in zip(latents, values) if v > 0]
        assert [j for j, _ in token.latents] == [j for j, _ in expected]
        assert [v for _, v in token.latents] == pytest.approx([v for _, v in expected], rel=1e-5)


def test_a_long_text_is_cut_and_bad_input_refused(served):
    _, _, live, _ = served
    long = live.run("L0-topk", "cat " * (MAX_TOKENS + 20))
    assert long.truncated and len(long.tokens) == MAX_TOKENS
    with pytest.raises(ConfigError, match=f"the text has {MAX_CHARS + 1:,} characters, more than the {MAX_CHARS:,}"):
        live.run("L0-topk", "x" * (MAX_CHARS + 1))
    with pytest.raises(ConfigError, match="no SAE 'nope' here; the SAEs are L0-topk, L1-relu"):
        live.run("nope", "the cat")
    with pytest.raises(ConfigError, match="the text has no token"):
        live.run("L0-topk", "")


def post(port, body: bytes, headers: dict[str, str], path: str = "/api/live") -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("POST", path, skip_accept_encoding=True)
    for name, value in headers.items():
        conn.putheader(name, value)
    conn.endheaders()
    conn.send(body)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, json.loads(data) if response.getheader("Content-Type") == "application/json" else {}


JSON = {"Content-Type": "application/json"}


def test_the_live_endpoint_answers_a_json_post(served):
    *_, port = served
    body = json.dumps({"sae": "L0-topk", "text": f"a dog {EVIL}"}).encode()
    status, answer = post(port, body, {**JSON, "Content-Length": str(len(body)), "Origin": f"http://localhost:{port}"})
    assert status == 200 and answer["sae"] == "L0-topk" and EVIL in [t["text"] for t in answer["tokens"]]
    assert all(isinstance(j, int) and v > 0 for t in answer["tokens"] for j, v in t["latents"])


@pytest.mark.parametrize(
    "body, headers, status, words",
    [
        (b'{"sae": "L0-topk", "text": "a"}', {"Content-Type": "text/plain"}, 415, "must be application/json"),
        (b'{"sae": "L0-topk", "text": "a"}', {**JSON, "Origin": "http://evil.example"}, 403, "only pages of localhost"),
        (b'{"sae": "L0-topk", "text": "a"}', {**JSON, "Origin": "null"}, 403, "only pages of localhost"),
        (b"x" * (MAX_BODY + 1), JSON, 413, f"larger than {MAX_BODY:,} bytes"),
        (b"{", JSON, 400, "not valid JSON"),
        (b"\xff\xfe", JSON, 400, "the request body is not UTF-8 text"),
        (b"[1]", JSON, 400, 'must be {"sae": name, "text": text}'),
        (b'{"sae": "nope", "text": "a"}', JSON, 400, "no SAE 'nope' here"),
        (json.dumps({"sae": "L0-topk", "text": "x" * (MAX_CHARS + 1)}).encode(), JSON, 400, "more than the 2,000"),
    ],
)
def test_a_bad_post_is_refused_by_name(served, body, headers, status, words):
    *_, port = served
    got, answer = post(port, body, {**headers, "Content-Length": str(len(body))})
    assert got == status and words in answer["error"]


def test_a_post_without_length_or_elsewhere_is_refused(served):
    *_, port = served
    assert post(port, b"", JSON)[0] == 411
    status, _ = post(port, b"{}", {**JSON, "Content-Length": "2"}, path="/L0-topk/page.json")
    assert status == 405


def test_the_live_page_is_served_with_its_script(served):
    *_, port = served
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/live.html")
    response = conn.getresponse()
    page = response.read().decode()
    assert response.status == 200 and '<option value="L0-topk">' in page and f'maxlength="{MAX_CHARS}"' in page


def test_the_cli_searches_and_exports_for_neuronpedia(served, tmp_path, capsys):
    suite, cfg, _, _ = served
    base = ["browse", str(suite), "--model", cfg.model, "--corpus", cfg.corpus, "--tokens", str(cfg.n_tokens),
            "--context-size", "16", "--skip-positions", "1"]  # fmt: skip
    assert main([*base, "--search", "<script"]) == 0
    out = capsys.readouterr().out
    assert "L0-topk: " in out and "latent(s) for '<script'" in out and repr(EVIL) in out
    assert main([*base, "--neuronpedia", str(tmp_path / "np")]) == 0
    assert sorted(p.name for p in (tmp_path / "np").iterdir()) == ["L0-topk", "L1-relu"]
    assert main([*base, "--neuronpedia", str(tmp_path / "np")]) == 2  # refused: not a new folder
    assert "exists and is not an empty folder" in capsys.readouterr().err
