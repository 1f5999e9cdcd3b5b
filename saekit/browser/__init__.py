"""Feature browser: per-latent pages (top contexts, quantile examples, histogram, density, logit
effects, nearest latents), stored compactly next to each SAE, served on localhost (with search and
live text through the model) or exported as a static site, or as Neuronpedia upload batches.

    from saekit.browser import build_browser, export_neuronpedia, search_latents, serve_in_thread
    browser = build_browser("demo-output/saes", export="demo-output/browser")
    search_latents(browser.saes["L9-topk"], "iraq")
"""

from saekit.browser.build import Browser, BrowserConfig, build_browser, sae_folders
from saekit.browser.export import export_site
from saekit.browser.live import LiveModel
from saekit.browser.neuronpedia import export_neuronpedia
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
    "export_neuronpedia",
    "export_site",
    "make_server",
    "route",
    "sae_folders",
    "search_latents",
    "serve_in_thread",
]
