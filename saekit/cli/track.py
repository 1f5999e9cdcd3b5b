"""`saekit track CONFIG`: a series of SAEs over a model's training checkpoints (SAE-Track), its analyses
and plots, resumable (saekit.track)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "track", help="SAE-Track: SAEs over a model's training checkpoints, each warm-started from the previous; drift and formation"
    )
    p.add_argument("config", help="run config with a [track] table (.toml, .yaml or .json)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. track.steps=100")
    p.add_argument("--out", help="output folder (default: the config's `out`)")
    p.add_argument("--resume", action="store_true", help="continue the series in the output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from saekit.eval.table import markdown_table
    from saekit.track.config import load_track_config
    from saekit.track.measure import measure_series
    from saekit.track.report import DYNAMICS, write_report
    from saekit.track.series import run_series

    tr = load_track_config(args.config, args.set)
    out = Path(args.out) if args.out else tr.run.out
    series = run_series(tr, out, resume=args.resume)
    summary = write_report(out, series, measure_series(tr, series))
    rows = [
        {
            "name": name,
            "alive": s["alive_latents"],
            "never_formed": s["never_formed"],
            "settled_at": s["settled_at"],
            "progress_vs_loss": s["progress_vs_loss"],
            "purity_vs_formation": s["purity_vs_formation"],
            "final_fvu": s["fvu"][-1],
        }
        for name, s in summary.items()
    ]
    print(markdown_table(rows, list(rows[0])))
    print(f"\nseries in {out / 'series'}; dynamics, plots and summary.json in {out / DYNAMICS}")
    return 0
