"""A report folder: ``results.json`` (one row per SAE), ``report.md`` (an introduction, the table and
the plot) and a summary printed for the person who ran it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from saekit.eval.table import markdown_table


def write_report(
    out: Path,
    *,
    title: str,
    intro: str,
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    plot: Path | None,
    suite: Path,
) -> None:
    """Write ``results.json`` and ``report.md`` into ``out`` and print the table and every output path."""
    table = markdown_table(rows, columns)
    (out / "results.json").write_text(json.dumps(list(rows), indent=2) + "\n")
    image = f"\n![{title}]({plot.name})\n" if plot is not None else ""
    (out / "report.md").write_text(f"# {title}\n\n{intro}\n\n{table}\n{image}")
    print("\n" + table + "\n")
    print(f"report: {out / 'report.md'}\nresults: {out / 'results.json'}")
    if plot is not None:
        print(f"plot: {plot}")
    print(f"SAEs: {suite}\ntraining log: {out / 'train' / 'metrics.jsonl'}")
