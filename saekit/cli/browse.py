"""`saekit browse SAE_OR_SUITE`: compute (once) and serve or export the feature pages."""

from __future__ import annotations

import argparse

from saekit.browser.build import BrowserConfig
from saekit.browser.store import Browser
from saekit.cli.args import doc_help, non_negative_int, port, positive_int
from saekit.strict import field_docs


def add_parser(sub: argparse._SubParsersAction) -> None:
    docs = field_docs(BrowserConfig)
    p = sub.add_parser("browse", help="feature pages of an SAE or suite: top contexts, histograms, logit effects")
    p.add_argument("target", metavar="SAE_OR_SUITE", help="an SAE folder or a suite folder (with index.json)")
    p.add_argument("--model", default=None, help=doc_help(docs["model"]))
    # The text settings default to None here (BrowserConfig's defaults apply), so that one given for an
    # SAE of a board-game model is refused by name.
    p.add_argument("--corpus", default=None, help=doc_help(docs["corpus"]))
    p.add_argument("--tokens", type=positive_int, default=None, help=doc_help(docs["n_tokens"]))
    p.add_argument("--context-size", type=positive_int, default=None, help=doc_help(docs["context_size"]))
    p.add_argument("--split", default=None, choices=["train", "test", "all"], help=doc_help(docs["split"]))
    p.add_argument("--skip-positions", type=non_negative_int, default=None, help=doc_help(docs["skip_positions"]))
    p.add_argument("--games", type=positive_int, default=None, help=doc_help(docs["games"]))
    p.add_argument("--game-seed", type=non_negative_int, default=BrowserConfig.game_seed, help=doc_help(docs["game_seed"]))
    p.add_argument("--device", default="cpu", help=doc_help(docs["device"]))
    p.add_argument("--rebuild", action="store_true", help="recompute even when a cache matches")
    p.add_argument(
        "--export", metavar="DIR", default=None, help="write the site (pages and each SAE's store files) into DIR instead of serving"
    )
    p.add_argument(
        "--dynamics", metavar="DIR", action="append", default=None,
        help="a folder OUT/dynamics/<name> written by saekit track: each latent's page shows its drift and formation "
        "curves, formation checkpoint and token purity (repeat for several SAEs of a suite; each goes to the SAE of its name)",
    )  # fmt: skip
    p.add_argument("--search", metavar="TEXT", default=None, help="print the latents whose explanation or top tokens hold TEXT, then stop")
    p.add_argument(
        "--neuronpedia", metavar="DIR", default=None,
        help="write Neuronpedia upload batches (SAEDashboard's batch-N.json) of every SAE into the new folder DIR, then stop",
    )  # fmt: skip
    p.add_argument("--live", action="store_true", help="load the model too, for the server's live.html: latents on each token of a typed text")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port, default=8000, help="port to serve on (0: any free port)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from saekit.browser.build import build_browser
    from saekit.browser.live import LiveModel
    from saekit.browser.neuronpedia import check_neuronpedia_target, export_neuronpedia
    from saekit.browser.server import is_loopback, make_server

    given = {
        "corpus": args.corpus, "n_tokens": args.tokens, "context_size": args.context_size, "split": args.split,
        "skip_positions": args.skip_positions,
    }  # fmt: skip
    cfg = BrowserConfig(
        model=args.model, device=args.device, games=args.games, game_seed=args.game_seed,
        **{k: v for k, v in given.items() if v is not None},
    )  # fmt: skip
    if args.neuronpedia is not None:
        check_neuronpedia_target(args.neuronpedia)  # before minutes of computing, not after
    browser = build_browser(args.target, cfg, rebuild=args.rebuild, export=args.export, dynamics=args.dynamics)
    if args.search is not None:
        _print_hits(browser, args.search)
    if args.neuronpedia is not None:
        print(f"browse: Neuronpedia batches written to {export_neuronpedia(browser, args.neuronpedia)}")
    if args.export is not None:
        print(f"browse: pages written to {args.export}/index.html (serve the folder over HTTP to open them)")
    if args.export is not None or args.search is not None or args.neuronpedia is not None:
        return 0
    if not is_loopback(args.host):
        print(f"browse: warning: serving on {args.host}, reachable from other machines")
    live = LiveModel.load(args.target, args.model, args.device) if args.live else None
    server = make_server(browser, args.host, args.port, live)
    host, port = server.server_address[:2]
    print(f"browse: serving {len(browser.saes)} SAE(s) on http://{host}:{port}/ (Ctrl-C to stop)")
    if live is not None:
        print(f"browse: live text on http://{host}:{port}/live.html")
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def _print_hits(browser: Browser, query: str) -> None:
    """The latents of each SAE that ``query`` finds, one line each: id, top tokens, explanation."""
    from saekit.browser.search import search_latents

    for name, data in browser.saes.items():
        hits = search_latents(data, query)
        print(f"{name}: {len(hits)} latent(s) for {query!r}")
        for h in hits:
            tops = ", ".join(f"{t.text!r}×{t.count}" for t in h.top_tokens)
            print(f"  {h.latent}: {tops}" + (f" · {h.explanation}" if h.explanation else ""))


__all__ = ["add_parser"]
