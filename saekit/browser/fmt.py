"""Text helpers for the pages: escaping and number formatting."""

from __future__ import annotations

import html
import math
from urllib.parse import quote


def esc(text: object) -> str:
    """HTML-escape any value for element text and quoted attributes."""
    return html.escape(str(text), quote=True)


def token_text(token: str) -> str:
    """A token's display text, escaped, with invisible characters made visible."""
    return esc(token.replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍"))


def url_part(name: str) -> str:
    """A path segment for a link (percent-encoded, then escaped for the attribute)."""
    return esc(quote(name, safe=""))


def num(x: float | int | None, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, int) and not isinstance(x, bool):
        return f"{x:,}"
    x = float(x)
    if math.isnan(x) or math.isinf(x):
        return str(x)
    if x == 0:
        return "0"
    if abs(x) >= 1e5 or abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits + 1}g}"


def percent(fraction: float) -> str:
    return f"{100 * fraction:.3g}%"
