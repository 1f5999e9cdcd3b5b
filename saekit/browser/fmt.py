"""The one way the pages make HTML: templates whose fields are escaped unless they are :class:`Html`.

Every value put into a page, whatever its expected type (a name, a number, a token string, a key of a
JSON file), goes through :func:`html` or :func:`join`, which escape it for element text and for
double-quoted attributes. Only :class:`Html`, the result of those two functions (or of :func:`esc`),
goes in as it is, so markup can come only from this package's own template literals; the template
argument is typed ``LiteralString`` so that the type checker refuses a template built from data.

    html('<td data-v="{v}">{v}</td>', v=name)          # name escaped in both places
    join(html("<li>{}</li>", x) for x in items)        # Html pieces joined as they are
"""

from __future__ import annotations

import functools
import html as _html
import math
import string
from collections.abc import Iterable
from typing import LiteralString
from urllib.parse import quote


class Html(str):
    """Markup made by :func:`html`, :func:`join` or :func:`esc`: safe to insert as it is."""

    __slots__ = ()


_FIELDS = string.Formatter()
"""Parses templates and looks up dotted or indexed field names (``{s.tokens}``) as ``str.format`` does."""


@functools.cache
def _parsed(template: str) -> tuple[tuple[str, str | None, str | None, str | None], ...]:
    """(literal text, field name, format spec, conversion) pieces; parsed once per template, since
    pages fill the same few templates hundreds of thousands of times."""
    return tuple(_FIELDS.parse(template))


def html(template: LiteralString, /, *args: object, **kwargs: object) -> Html:
    """``template`` (``str.format`` syntax, without nested fields in a format spec) with every field
    escaped after formatting, except :class:`Html` values, which go in as they are."""
    out, auto = [], 0
    for literal, name, spec, conversion in _parsed(template):
        out.append(literal)
        if name is None:
            continue
        if name == "":
            value, auto = args[auto], auto + 1
        elif name.isdigit():
            value = args[int(name)]
        elif name.isidentifier():
            value = kwargs[name]
        else:
            value = _FIELDS.get_field(name, args, kwargs)[0]
        if conversion:
            value = _FIELDS.convert_field(value, conversion)
        if isinstance(value, Html):
            if spec:
                raise ValueError(f"format spec {spec!r} applied to markup")
            out.append(value)
        else:
            out.append(_html.escape(format(value, spec or ""), quote=True))
    return Html("".join(out))


def esc(value: object) -> Html:
    """``value`` as element text or a quoted attribute: escaped, unless it is :class:`Html` already."""
    return value if isinstance(value, Html) else Html(_html.escape(str(value), quote=True))


def join(parts: Iterable[object], sep: LiteralString = "") -> Html:
    """The pieces one after the other, each escaped unless it is :class:`Html`."""
    return Html(sep.join(esc(part) for part in parts))


def token_text(token: str) -> Html:
    """A token's display text, escaped, with invisible characters made visible."""
    return esc(token.replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍"))


def url_part(name: str) -> Html:
    """A relative path segment for a link: percent-encoded (so never a scheme or a ``/``), then escaped."""
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
