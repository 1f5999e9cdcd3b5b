"""The browser end to end without a browser: build on a tiny model, cache, serve (pages, store files,
range requests, search), export, refuse traversal."""

import http.client
import json
import re
from pathlib import Path

import pytest
from browser_helpers import EVIL, tiny_setup

from saekit.browser import build_browser, search_latents, serve_in_thread
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


def fetch(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict]:
    """GET with the path sent exactly as given (no client-side normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("GET", path, skip_accept_encoding=True)
    for name, value in (headers or {}).items():
        conn.putheader(name, value)
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body, dict(response.getheaders())


def get(port: int, path: str) -> tuple[int, str, dict]:
    status, body, headers = fetch(port, path)
    return status, body.decode("utf-8", "replace"), headers


def test_every_page_answers(built):
    _, _, browser, port = built
    status, body, headers = get(port, "/")
    assert status == 200 and "default-src 'none'" in headers["Content-Security-Policy"]
    for name in ("L0-topk", "L1-relu"):
        assert f'href="{name}/index.html"' in body
        status, listing, _ = get(port, f"/{name}/index.html")
        assert status == 200 and listing.count('<tr><td class="n" data-v=') == 24
        status, page, _ = get(port, f"/{name}/latent.html")
        assert status == 200 and 'id="latent"' in page
        status, data, headers = get(port, f"/{name}/page.json")
        assert status == 200 and headers["Content-Type"] == "application/json" and json.loads(data)["d_sae"] == 24
        assert headers["X-Content-Type-Options"] == "nosniff"
        for file in ("latents.bin", "tokens.bin"):
            status, _, headers = fetch(port, f"/{name}/{file}")
            assert status == 200 and headers["Content-Type"] == "application/octet-stream" and headers["Accept-Ranges"] == "bytes"
        assert get(port, f"/{name}/dynamics.bin")[0] == 404  # no dynamics given
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
        ("/L0-topk/page.json/..", 400),
        ("/L0-topk/../../cfg.json", 400),
        ("/L0-topk/latent/%00.html", 400),
        ("/L0-topk/latent/%ff.html", 400),
        ("/..%5c..%5cetc%5cpasswd", 400),
        ("/L0-topk/cfg.json", 404),
        ("/L0-topk/sae_weights.safetensors", 404),
        ("/L0-topk/browser-cache/meta.json", 404),
        ("/etc/passwd", 404),
        ("/L0-topk/latent/0.html", 404),
        ("/L0-topk/latent.html/x", 404),
        ("/L0-topk/%6catent.html", 200),
        ("/L0-topk/latent.html?x=../../cfg.json", 200),
        ("/L0-topk/dynamics.bin", 404),
        ("/L0-topk/meta.json", 404),
        ("/L1-relu/../L0-topk/latents.bin", 400),
        ("/live.html", 404),
        ("/api/live", 404),
        ("/index.json", 404),
    ],
)
def test_paths_outside_the_site_are_refused(built, path, status):
    _, _, _, port = built
    code, body, _ = get(port, path)
    assert code == status
    assert "root:" not in body and '"d_sae"' not in body and "safetensors" not in body


def test_corpus_tokens_are_escaped_everywhere(built):
    _, _, browser, port = built
    pages = [render(browser, route(browser, p)) for p in ("/", "/L0-topk/", "/L0-topk/latent.html")]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[1]
    for page in pages:
        assert "alert(1)</script>" not in page
        assert len(re.findall(r"<script", page)) == 1  # the page's own script only
    assert EVIL in json.loads(get(port, "/L0-topk/page.json")[1])["vocab"].values()  # text for the page's text nodes


@pytest.mark.parametrize("latent", [0, 7, 23])
def test_a_range_request_reads_one_latents_record(built, latent):
    _, _, _, port = built
    size = json.loads(get(port, "/L0-topk/page.json")[1])["record_size"]
    whole = fetch(port, "/L0-topk/latents.bin")[1]
    assert len(whole) == 24 * size
    status, part, headers = fetch(port, "/L0-topk/latents.bin", {"Range": f"bytes={latent * size}-{(latent + 1) * size - 1}"})
    assert status == 206 and part == whole[latent * size : (latent + 1) * size]
    assert headers["Content-Range"] == f"bytes {latent * size}-{(latent + 1) * size - 1}/{len(whole)}"


@pytest.mark.parametrize("header", ["bytes=5-2", f"bytes=0-{10**9}", "bytes=-5", "bytes=0-1,4-5", "items=0-1", "bytes=x-1"])
def test_a_range_it_cannot_satisfy_gets_the_whole_file(built, header):
    _, _, _, port = built
    status, body, _ = fetch(port, "/L0-topk/latents.bin", {"Range": header})
    assert status == 200 and body == fetch(port, "/L0-topk/latents.bin")[1]


def test_search_finds_latents_by_top_token(built):
    _, _, browser, port = built
    status, body, headers = get(port, "/L0-topk/search.json?q=%3Cscript")
    hits = json.loads(body)["hits"]
    assert status == 200 and headers["Content-Type"] == "application/json" and hits
    assert all(any("<script" in t for t, _ in h["top_tokens"]) for h in hits)
    assert [h["latent"] for h in hits] == [h.latent for h in search_latents(browser.saes["L0-topk"], "<script")]
    for query, words in (("", "a search needs a query of 1 to 200 characters, got 0"), ("x" * 201, "got 201")):
        status, body, _ = get(port, f"/L0-topk/search.json?q={query}")
        assert status == 400 and words in json.loads(body)["error"]


def test_a_post_without_a_live_model_is_not_allowed(built):
    _, _, _, port = built
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/api/live", body=b"{}", headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 405 and response.getheader("Allow") == "GET, HEAD"
    conn.close()


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
    files = sorted(p.relative_to(tmp_path / "site").as_posix() for p in (tmp_path / "site").rglob("*") if p.is_file())
    per_sae = ["index.html", "latent.html", "latents.bin", "page.json", "tokens.bin"]
    assert files == sorted(["index.html", "saekit-export.json", *(f"{n}/{f}" for n in ("L0-topk", "L1-relu") for f in per_sae)])
    for rel in ("index.html", "L1-relu/index.html", "L1-relu/latent.html", "L1-relu/page.json", "L1-relu/latents.bin"):
        assert (tmp_path / "site" / rel).read_bytes() == fetch(port, "/" + rel)[1]


def test_a_suite_index_naming_a_folder_outside_is_refused(tmp_path):
    (tmp_path / "index.json").write_text(json.dumps({"saes": [{"name": "../x"}]}))
    from saekit.errors import ArtifactError

    with pytest.raises(ArtifactError, match="not an SAE folder inside"):
        build_browser(tmp_path, progress=False)
    with pytest.raises(ArtifactError, match="neither an SAE folder"):
        build_browser(Path(tmp_path / "nothing"), progress=False)
