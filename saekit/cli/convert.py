"""`saekit convert SRC OUT`: write SAEs saved by another library (Gemma Scope, sparsify,
dictionary_learning, or saekit / SAELens itself) as a saekit/SAELens folder, or as a suite folder
when SRC holds several SAEs below it."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from saekit.errors import ArtifactError


def add_parser(sub) -> None:
    convert = sub.add_parser(
        "convert",
        help="write a Gemma Scope, sparsify or dictionary_learning SAE (or a folder of them) as a saekit/SAELens folder",
    )
    convert.add_argument("src", help="an SAE folder (params.npz / cfg.json + sae.safetensors / ae.pt + config.json), or a folder of them")
    convert.add_argument("out", help="output folder: one SAE folder, or a suite folder when SRC holds several SAEs")
    convert.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    write_converted(Path(args.src), Path(args.out))
    return 0


def write_converted(src: Path, out: Path) -> None:
    """Write the SAE(s) at or below ``src`` as one saekit folder, or as a suite when there are several,
    and print what was written."""
    from saekit.eval.table import markdown_table
    from saekit.io import save_sae, save_suite
    from saekit.io.convert import find_saes, read_any

    found = find_saes(src)
    saes = read_any(src)
    if found[0].name == "":
        save_sae(saes[""], out)
        names = [out.name]
        print(f"{found[0].layout} SAE at {src} written to {out}")
    else:
        names = suite_names([f.name for f in found])
        save_suite(dict(zip(names, saes.values())), out)
        print(f"{len(found)} SAEs found below {src} written as a suite to {out}")
    rows = [
        {"name": name, "from": f.layout, "architecture": sae.architecture, "d_in": sae.d_in, "d_sae": sae.d_sae, "site": sae.site or ""}
        for name, f, sae in zip(names, found, saes.values())
    ]
    print(markdown_table(rows, ["name", "from", "architecture", "d_in", "d_sae", "site"]))


def suite_names(paths: list[str]) -> list[str]:
    """Suite member names from relative paths: "layers.3/seed0" -> "layers.3-seed0"."""
    names = [re.sub(r"[^A-Za-z0-9._-]", "_", p.replace("/", "-")).lstrip(".") or "sae" for p in paths]
    if len(set(names)) != len(names):
        raise ArtifactError(f"the SAEs' paths {paths} give clashing suite names {names}")
    return names
