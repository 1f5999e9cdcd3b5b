"""A report folder: ``results.json`` (one row per SAE), ``report.md`` (an introduction, the table,
the plots and links) and a summary printed for the person who ran it."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from saekit.atomic import write_text
from saekit.eval.table import markdown_table


def write_report(
    out: Path,
    *,
    title: str,
    intro: str,
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    plots: Sequence[Path | None] = (),
    links: Mapping[str, Path | str] | None = None,
) -> None:
    """Write ``results.json`` and ``report.md`` into ``out`` and print the table and every output path.

    ``plots`` that were not drawn (None: matplotlib missing) are left out; ``links`` (label → path) are
    listed at the end of the report and printed, paths inside ``out`` written relative to it.
    """
    out = Path(out)
    table = markdown_table(rows, columns)
    drawn = [p for p in plots if p is not None]
    write_text(out / "results.json", json.dumps(list(rows), indent=2) + "\n")
    images = "".join(f"\n![{p.stem}]({_relative(p, out)})\n" for p in drawn)
    listed = "".join(f"- {label}: [{_relative(Path(p), out)}]({_relative(Path(p), out)})\n" for label, p in (links or {}).items())
    write_text(out / "report.md", f"# {title}\n\n{intro}\n\n{table}\n{images}" + (f"\n{listed}" if listed else ""))
    print("\n" + table + "\n")
    print(f"report: {out / 'report.md'}\nresults: {out / 'results.json'}")
    for p in drawn:
        print(f"plot: {p}")
    for label, p in (links or {}).items():
        print(f"{label}: {p}")


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)
