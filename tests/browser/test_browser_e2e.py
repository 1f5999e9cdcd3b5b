"""Headless Chromium (Debian's system browser, driven by Playwright) over the served pages: the
overview, a search in the latent list, a latent page with its training dynamics, and a screenshot. No browser is downloaded:
the test skips when /usr/bin/chromium or the playwright package is missing."""

from pathlib import Path

import pytest
from browser_helpers import EVIL, tiny_dynamics, tiny_setup

from saekit.browser import build_browser, serve_in_thread

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
    browser = build_browser(suite, cfg, dynamics=dynamics, progress=False)
    server, _ = serve_in_thread(browser, "127.0.0.1", 0)
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        tab = chromium.new_page(viewport={"width": 1100, "height": 900})
        tab.dialogs = []
        tab.on("dialog", lambda d: (tab.dialogs.append(d.message), d.dismiss()))
        tab.base = f"http://127.0.0.1:{server.server_address[1]}"
        tab.root = root
        yield tab
        chromium.close()
    server.shutdown()
    server.server_close()


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
    page.wait_for_url(f"**/L0-topk/latent/{latent}.html")
    assert page.locator("svg.hist rect").count() == 40
    assert page.locator(".ex").count() > 0
    assert page.locator("text=Logit effects").count() == 1


def test_a_script_token_shows_as_text(page):
    page.goto(page.base + "/L0-topk/index.html")
    page.fill("#q", "script")
    hits = page.locator("#latents tbody tr:not([hidden]) a")
    assert hits.count() > 0
    hits.first.click()
    page.wait_for_load_state()
    assert EVIL in page.inner_text("body")
    assert page.eval_on_selector_all("script", "els => els.length") == 0
    assert page.dialogs == []
    shot = page.root / "latent.png"
    page.screenshot(path=str(shot), full_page=False)
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_the_dynamics_curves_render(page):
    page.goto(page.base + "/L0-topk/latent/2.html")
    assert page.locator("text=Training dynamics").is_visible()
    charts = page.locator("svg.curve")
    assert charts.count() == 2
    for i in range(2):
        box = charts.nth(i).bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 100
    assert page.locator("svg.curve polyline").count() == 3 and page.locator("svg.curve line.marker").count() == 1
    assert page.locator("svg.curve circle title").first.text_content() == "step-0: cos to final 0.08333"
    assert "formed at checkpoint step-200 (2 of 3)" in page.inner_text("body")
    assert page.dialogs == []
    page.locator("svg.curve").first.scroll_into_view_if_needed()
    shot = page.root / "dynamics.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
