"""Time the feature browser's own work for a 4608-latent TopK SAE over ~100k tokens of d=576
activations (random, so no model forward is timed): statistics, logit effects against a SmolLM2-sized
unembedding (49,152 x 576), neighbours, cache write and read, and rendering every page.

    .venv/bin/python benchmarks/browser.py [--tokens 100000] [--threads 2] [--export /tmp/pages]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import saekit
from saekit.browser import Browser, BrowserConfig, export_site
from saekit.browser.build import browser_data
from saekit.browser.stats import Layout
from saekit.browser.store import load_data, save_data


class NumberedTokenizer:
    """Stands in for a tokenizer: token i reads "t<i> "."""

    def batch_decode(self, ids: list[list[int]]) -> list[str]:
        return [f"t{i[0]} " for i in ids]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--d-sae", type=int, default=4608)
    ap.add_argument("--export", default=None, help="folder for the pages (default: a temporary one)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layout = Layout(128, 2)
    n_ctx = -(-args.tokens // layout.per_context)
    tokens = torch.randint(0, 49152, (n_ctx, layout.context))
    acts = torch.randn(n_ctx * layout.per_context, 576)
    sae = saekit.build_sae("topk", d_in=576, d_sae=args.d_sae, k=32, seed=0)
    sae.metadata["site"] = "layers.9.resid_post"
    W_U, gamma = torch.randn(49152, 576) * 0.02, torch.rand(576) + 0.5
    cfg = BrowserConfig()
    times = {}
    started = time.perf_counter()
    data = browser_data(
        "bench", sae, acts, tokens, layout, cfg, scale=gamma, W_U=W_U, tokenizer=NumberedTokenizer(), progress=True
    )
    times["statistics + logit effects + neighbours"] = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        save_data(folder, data, "bench")
        times["cache write"] = time.perf_counter() - t
        t = time.perf_counter()
        data = load_data(folder)
        times["cache read (second open)"] = time.perf_counter() - t
        t = time.perf_counter()
        out = Path(args.export) if args.export else folder / "pages"
        export_site(Browser(folder, "bench", {"bench": data}), out, progress=True)
        times["write the export (pages and store files)"] = time.perf_counter() - t
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        store = sum(p.stat().st_size for p in (folder / "browser-cache").iterdir())
        print(f"store: {store / args.d_sae:,.0f} bytes per latent; export: {size / 1e6:.1f} MB")
    total = sum(v for k, v in times.items() if not k.startswith("cache read"))
    print(f"{acts.shape[0]:,} tokens, d_sae {args.d_sae}, {args.threads} threads")
    for k, v in times.items():
        print(f"  {k}: {v:.1f} s")
    print(f"  total (first open, without the model forward): {total:.1f} s; pages {size / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
