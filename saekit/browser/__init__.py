"""Feature browser: per-latent pages (top contexts, quantile examples, histogram, density, logit
effects, nearest latents), cached next to each SAE, served on localhost or exported as static HTML.

    from saekit.browser import build_browser, serve_in_thread
    browser = build_browser("demo-output/saes", export="demo-output/browser")
"""

from saekit.browser.build import Browser, BrowserConfig, build_browser, sae_folders
from saekit.browser.export import export_site
from saekit.browser.live import LiveModel
from saekit.browser.search import SearchHit, search_latents
from saekit.browser.server import make_server, route, serve_in_thread
from saekit.browser.stats import LatentStats, Layout, StatsSettings, compute_latent_stats
from saekit.browser.store import SaeData

__all__ = [
    "Browser",
    "BrowserConfig",
    "LatentStats",
    "Layout",
    "LiveModel",
    "SaeData",
    "SearchHit",
    "StatsSettings",
    "build_browser",
    "compute_latent_stats",
    "export_site",
    "make_server",
    "route",
    "sae_folders",
    "search_latents",
    "serve_in_thread",
]
