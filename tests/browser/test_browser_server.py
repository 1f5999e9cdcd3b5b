"""The browser end to end without a browser: build on a tiny model, cache, serve, export, refuse traversal."""

import http.client
import json
import re
from pathlib import Path

import pytest
from browser_helpers import EVIL, tiny_setup

from saekit.browser import build_browser, serve_in_thread
from saekit.browser.server import render, route
from saekit.browser.store import CACHE_DIR
from saekit.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    suite, cfg = tiny_setup(root)
    (root / "results.json").write_text(json.dumps([{"name": "L0-topk", "fvu": 0.25, "delta_ce": 0.5}]))
    browser = build_browser(suite, cfg, progress=False)
    server, _ = serve_in_thread(browser, "127.0.0.1", 0)
    yield suite, cfg, browser, server.server_address[1]
    server.shutdown()
    server.server_close()


def get(port: int, path: str) -> tuple[int, str, dict]:
    """GET with the path sent exactly as given (no client-side normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("GET", path, skip_accept_encoding=True)
    conn.endheaders()
    response = conn.getresponse()
    body = response.read().decode("utf-8", "replace")
    conn.close()
    return response.status, body, dict(response.getheaders())


def test_every_page_answers(built):
    _, _, browser, port = built
    status, body, headers = get(port, "/")
    assert status == 200 and "default-src 'none'" in headers["Content-Security-Policy"]
    for name in ("L0-topk", "L1-relu"):
        assert f'href="{name}/index.html"' in body
        status, listing, _ = get(port, f"/{name}/index.html")
        assert status == 200 and listing.count('<tr><td class="n" data-v=') == 24
        for latent in range(24):
            status, page, _ = get(port, f"/{name}/latent/{latent}.html")
            assert status == 200 and f"latent {latent}</h1>" in page
    assert get(port, "/L0-topk/")[0] == 200


def test_overview_shows_metrics_from_the_eval_file_and_the_sample(built):
    _, _, browser, port = built
    body = get(port, "/index.html")[1]
    assert "eval fvu" in body and "0.25" in body and "layers.0.resid_post" in body and "L0 (sample)" in body


@pytest.mark.parametrize(
    "path, status",
    [
        ("/../../etc/passwd", 400),
        ("/%2e%2e/%2e%2e/etc/passwd", 400),
        ("/%2E%2E%2fetc%2fpasswd", 400),
        ("/L0-topk/latent/..%2f..%2f..%2fcfg.json", 400),
        ("/L0-topk/../../cfg.json", 400),
        ("/L0-topk/latent/%00.html", 400),
        ("/L0-topk/latent/%ff.html", 400),
        ("/..%5c..%5cetc%5cpasswd", 400),
        ("/L0-topk/cfg.json", 404),
        ("/L0-topk/sae_weights.safetensors", 404),
        ("/L0-topk/browser-cache/meta.json", 404),
        ("/etc/passwd", 404),
        ("/L0-topk/latent/24.html", 404),
        ("/L0-topk/latent/-1.html", 404),
        ("/L0-topk/latent/01.html", 404),
        ("/L0-topk/latent/1e1.html", 404),
        ("/L0-topk/latent/%31.html", 200),
        ("/index.json", 404),
    ],
)
def test_paths_outside_the_site_are_refused(built, path, status):
    _, _, _, port = built
    code, body, _ = get(port, path)
    assert code == status
    assert "root:" not in body and '"d_sae"' not in body


def test_corpus_tokens_are_escaped_everywhere(built):
    _, _, browser, _ = built
    data = browser.saes["L0-topk"]
    evil_id = next(i for i, text in data.vocab.items() if text == EVIL)
    latent = next(j for j in range(24) if (data.tokens.flatten() == evil_id).any() and data.stats.fire_count[j] > 0)
    pages = [render(browser, route(browser, p)) for p in ("/", "/L0-topk/", f"/L0-topk/latent/{latent}.html")]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[2]
    for page in pages:
        assert "alert(1)</script>" not in page
        assert len(re.findall(r"<script", page)) <= 1  # the page's own script only


def test_second_build_reuses_the_cache_and_a_new_setting_rebuilds(built, tmp_path):
    suite, cfg, _, _ = built
    meta = suite / "L0-topk" / CACHE_DIR / "meta.json"
    before = meta.stat().st_mtime_ns, meta.stat().st_ino
    import dataclasses

    again = build_browser(suite, cfg, progress=False)
    assert (meta.stat().st_mtime_ns, meta.stat().st_ino) == before
    assert again.saes["L0-topk"].stats.n_rows == 480
    bigger = build_browser(suite, dataclasses.replace(cfg, n_tokens=640), progress=False)
    assert bigger.saes["L0-topk"].stats.n_rows == 40 * 15
    assert not list(suite.glob("*/.browser-cache*"))  # no temporary or old folders left behind
    build_browser(suite, cfg, progress=False)  # back to the module's setting


def test_export_writes_the_served_pages(built, tmp_path):
    suite, cfg, browser, port = built
    argv = ["browse", str(suite), "--model", cfg.model, "--corpus", cfg.corpus, "--tokens", str(cfg.n_tokens),
            "--context-size", "16", "--skip-positions", "1", "--export", str(tmp_path / "site")]  # fmt: skip
    assert main(argv) == 0
    files = sorted(p.relative_to(tmp_path / "site").as_posix() for p in (tmp_path / "site").rglob("*.html"))
    assert len(files) == 1 + 2 * (1 + 24)
    for rel in ("index.html", "L1-relu/index.html", "L1-relu/latent/7.html"):
        assert (tmp_path / "site" / rel).read_text(encoding="utf-8") == get(port, "/" + rel)[1]


def test_a_suite_index_naming_a_folder_outside_is_refused(tmp_path):
    (tmp_path / "index.json").write_text(json.dumps({"saes": [{"name": "../x"}]}))
    from saekit.errors import ArtifactError

    with pytest.raises(ArtifactError, match="not an SAE folder inside"):
        build_browser(tmp_path, progress=False)
    with pytest.raises(ArtifactError, match="neither an SAE folder"):
        build_browser(Path(tmp_path / "nothing"), progress=False)
