"""Headless Chromium (Debian's system browser, driven by Playwright) over the served pages: the
overview, a search in the latent list, the latent page rendering latents from the store (with its
training dynamics, neighbour links, a screenshot), the same page from the static export on a plain
static server, and the live page through the tiny model. No browser is downloaded: the test skips
when /usr/bin/chromium or the playwright package is missing."""

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from browser_helpers import EVIL, HOSTILE, tiny_dynamics, tiny_setup

from saekit.browser import LiveModel, build_browser, export_site, serve_in_thread
from saekit.browser.explanations import FILE, Explanations, LatentExplanation, Scores, explanations_text
from saekit.browser.latent_script import LATENT_SCRIPT

pytestmark = pytest.mark.usefixtures("one_thread")

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[browser-test]')")
    root = tmp_path_factory.mktemp("e2e")
    suite, cfg = tiny_setup(root)
    dynamics = tiny_dynamics().save(root / "dynamics" / "L0-topk")
    scores = Scores(20, 0, 0.9, 0.85, 1.0, 0.8, 0.89)
    explained = Explanations("v1", HOSTILE, "http://x", {2: LatentExplanation(HOSTILE, scores, None)}, {3: HOSTILE})
    (suite / "L0-topk" / FILE).write_text(explanations_text(explained))
    browser = build_browser(suite, cfg, dynamics=dynamics, progress=False)
    server, _ = serve_in_thread(browser, "127.0.0.1", 0, live=LiveModel.load(suite, model=cfg.model))
    export_site(browser, root / "site")
    handler = functools.partial(_Quiet, directory=str(root / "site"))
    static = ThreadingHTTPServer(("127.0.0.1", 0), handler)  # a plain static server: no range requests
    threading.Thread(target=static.serve_forever, daemon=True).start()
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        tab = chromium.new_page(viewport={"width": 1100, "height": 900})
        tab.dialogs = []
        tab.on("dialog", lambda d: (tab.dialogs.append(d.message), d.dismiss()))
        tab.base = f"http://127.0.0.1:{server.server_address[1]}"
        tab.static = f"http://127.0.0.1:{static.server_address[1]}"
        tab.root = root
        yield tab
        chromium.close()
    for s in (server, static):
        s.shutdown()
        s.server_close()


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002
        pass


def open_latent(page, url, latent):
    page.goto(url)
    page.wait_for_selector(f"#latent[data-latent='{latent}']")


def test_overview_search_and_latent_page(page):
    page.goto(page.base + "/")
    assert page.title() == "suite"
    assert page.locator("text=layers.1.resid_post").count() >= 1
    page.click("a[href='L0-topk/index.html']")
    page.wait_for_url("**/L0-topk/index.html")
    rows = page.locator("#latents tbody tr")
    assert rows.count() == 24
    assert page.inner_text("#count") == "24 of 24 latents"

    page.fill("#q", "zzz-no-such-token")
    assert page.inner_text("#count") == "0 of 24 latents"
    page.fill("#q", "cat")
    shown = page.locator("#latents tbody tr:not([hidden])")
    assert shown.count() > 0
    assert all("cat" in shown.nth(i).inner_text().lower() for i in range(shown.count()))
    page.fill("#q", "")

    page.click("#latents th:nth-child(2)")  # density, descending
    densities = [
        float(v) for v in page.eval_on_selector_all("#latents tbody tr td:nth-child(2)", "els => els.map(e => e.dataset.v)")
    ]
    assert densities == sorted(densities, reverse=True)

    first = page.locator("#latents tbody tr a").first
    latent = int(first.inner_text())
    first.click()
    page.wait_for_url(f"**/L0-topk/latent.html#{latent}")
    page.wait_for_selector(f"#latent[data-latent='{latent}']")
    assert page.locator("svg.hist rect").count() == 40
    assert page.locator(".ex").count() > 0
    assert page.locator("text=Logit effects").count() == 1


def test_a_script_token_shows_as_text(page):
    page.goto(page.base + "/L0-topk/index.html")
    page.fill("#q", "script")
    hits = page.locator("#latents tbody tr:not([hidden]) a")
    assert hits.count() > 0
    hits.first.click()
    page.wait_for_selector("#latent[data-latent]:not([data-latent='error'])")
    assert EVIL in page.inner_text("body")
    assert page.eval_on_selector_all("script", "els => els.map(e => e.textContent)") == [LATENT_SCRIPT]
    assert page.dialogs == []
    shot = page.root / "latent.png"
    page.screenshot(path=str(shot), full_page=False)
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_the_dynamics_curves_render(page):
    open_latent(page, page.base + "/L0-topk/latent.html#2", 2)
    assert page.locator("text=Training dynamics").is_visible()
    charts = page.locator("svg.curve")
    assert charts.count() == 2
    for i in range(2):
        box = charts.nth(i).bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 100
    assert page.locator("svg.curve polyline").count() == 3 and page.locator("svg.curve line.marker").count() == 1
    assert page.locator("svg.curve circle title").first.text_content() == "step-0: cos to final 0.08333"
    assert "formed at checkpoint step-200 (2 of 3)" in page.inner_text("body")
    assert "token purity 50%" in page.inner_text("body")
    assert page.dialogs == []
    page.locator("svg.curve").first.scroll_into_view_if_needed()
    shot = page.root / "dynamics.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")


def test_an_explanation_shows_as_text(page):
    open_latent(page, page.base + "/L0-topk/latent.html#2", 2)
    text = page.inner_text("#latent")
    assert f"{HOSTILE}\n\ndetection: balanced accuracy 0.85 (accuracy 0.9, precision 1, recall 0.8; 20 answered, 0 failed)" in text
    assert f"fuzzing: no contexts to score \u00b7 by {HOSTILE} with prompts v1" in text
    open_latent(page, page.base + "/L0-topk/latent.html#3", 3)
    assert f"none: {HOSTILE} (by {HOSTILE} with prompts v1)" in page.inner_text("#latent")
    assert page.eval_on_selector_all("script", "els => els.length") == 1 and page.locator("meta[http-equiv=refresh]").count() == 0
    assert page.dialogs == [] and page.url.startswith(page.base)


def test_a_dead_latent_shows_no_curve_and_says_why(page):
    open_latent(page, page.base + "/L0-topk/latent.html#5", 5)
    text = page.inner_text("#latent")
    assert "Fired on fewer than two analysis tokens" in text and "token purity \u2013" in text
    assert page.locator("svg.curve polyline").count() == 0 and page.locator("svg.curve circle").count() == 0
    assert "NaN" not in text and "formed at checkpoint step-0 (1 of 3)" in text


def test_neighbour_links_and_a_bad_latent(page):
    open_latent(page, page.base + "/L1-relu/latent.html#3", 3)
    assert page.locator("text=Training dynamics").count() == 0  # dynamics were given for L0-topk only
    link = page.locator("a[href^='#']", has_text="latent").first
    target = int(link.inner_text().split()[1])
    link.click()
    page.wait_for_selector(f"#latent[data-latent='{target}']")
    assert page.title() == f"L1-relu · latent {target}"
    page.goto(page.base + "/L1-relu/latent.html#24")
    page.wait_for_selector("#latent[data-latent='error']")
    assert "no latent 24 in this SAE (0 to 23)" in page.inner_text("#latent")


def test_the_export_renders_the_same_latents_from_a_plain_static_server(page):
    for latent in (0, 5):
        open_latent(page, f"{page.base}/L0-topk/latent.html#{latent}", latent)
        served = page.inner_text("#latent")
        open_latent(page, f"{page.static}/L0-topk/latent.html#{latent}", latent)
        assert page.inner_text("#latent") == served
    assert page.dialogs == []


def test_the_live_page_shows_the_latents_of_each_token(page):
    page.goto(page.base + "/live.html")
    page.select_option("#sae", "L0-topk")
    page.fill("#text", f"the cat sat {EVIL} on the mat")
    page.click("button[type=submit]")
    page.wait_for_selector("#tokens span")
    tokens = page.locator("#tokens span")
    assert EVIL in page.inner_text("#tokens") and "tokens; click a token" in page.inner_text("#state")
    tokens.nth(1).click()
    links = page.locator("#detail a")
    assert links.count() > 0
    href = links.first.get_attribute("href")
    assert href is not None and href.startswith("L0-topk/latent.html#")
    assert page.eval_on_selector_all("#tokens script, #detail script", "els => els.length") == 0
    assert page.dialogs == []
