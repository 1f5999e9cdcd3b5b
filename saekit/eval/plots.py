"""Matplotlib, when it is installed, set up to write files without a display."""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any


def pyplot() -> ModuleType | None:
    """``matplotlib.pyplot`` on the Agg backend, or None (after saying so) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no plot; pip install 'saekit[plot]')")
        return None
    return plt


def save_figure(plt: ModuleType | Any, fig: Any, path: str | os.PathLike[str], *, dpi: int = 120) -> Path:
    """Lay out ``fig`` (unless it has a layout engine of its own), write it to ``path`` atomically (the
    format from the suffix) and close it: the one way a plot is saved."""
    from saekit.atomic import write_file

    path = Path(path)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    write_file(path, lambda tmp: fig.savefig(tmp, format=path.suffix[1:] or None, dpi=dpi))
    plt.close(fig)
    return path
