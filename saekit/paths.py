"""Where saekit keeps what it makes once per machine (converted models, compiled kernels)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$SAEKIT_CACHE``, else ``${XDG_CACHE_HOME:-~/.cache}/saekit``."""
    if root := os.environ.get("SAEKIT_CACHE"):
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "saekit"
