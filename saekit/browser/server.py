"""Serve the pages on localhost (stdlib ``http.server``); :mod:`saekit.browser.export` writes them as files.

The server opens no file named by a URL, so no path, encoded or not, and no symbolic link can reach
a file: a request path is decoded, checked segment by segment and matched against three patterns
whose parts are looked up in memory (an SAE name among the suite's names, a latent id as a plain
decimal below d_sae). Anything with ``.``/``..`` segments, a backslash, a NUL or an undecodable
escape is a 400; anything else that does not match is a 404. Only GET and HEAD are answered (405
otherwise). Bound to a loopback address (the default), it answers only requests addressed to a
loopback name or address, so a web page whose domain is rebound to 127.0.0.1 cannot read the pages
(403). Every response, the stdlib's own error pages included, carries the pages' CSP, ``nosniff``
and ``no-referrer``.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from saekit.browser.pages import CSP, latent_list_page, latent_page, overview_page
from saekit.browser.store import Browser

_LATENT = re.compile(r"(0|[1-9][0-9]{0,9})\.html")
_METHODS = ("GET", "HEAD")
_HEADERS = (("Content-Security-Policy", CSP), ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"))
"""Sent with every response."""


@dataclass(frozen=True)
class Route:
    """A page: ``kind`` "overview", "list" or "latent", with its SAE name and latent id where it has them."""

    kind: str
    sae: str | None = None
    latent: int | None = None


class BadRequest(Exception):
    """The path is malformed or tries to leave the site (HTTP 400)."""


def route(browser: Browser, raw_path: str) -> Route | None:
    """The page ``raw_path`` names, None for no page (404); raises BadRequest for a malformed path."""
    path = urlsplit(raw_path).path
    try:
        decoded = unquote(path, errors="strict")
    except UnicodeDecodeError as exc:
        raise BadRequest("undecodable path") from exc
    if not decoded.startswith("/") or "\\" in decoded or "\x00" in decoded:
        raise BadRequest("malformed path")
    parts = decoded[1:].split("/")
    if any(p in (".", "..") for p in parts):
        raise BadRequest("path with . or .. segments")
    if parts in ([""], ["index.html"]):
        return Route("overview")
    name, rest = parts[0], parts[1:]
    if name not in browser.saes:
        return None
    if rest in ([], [""], ["index.html"]):
        return Route("list", name)
    if len(rest) == 2 and rest[0] == "latent" and (m := _LATENT.fullmatch(rest[1])):
        latent = int(m.group(1))
        if latent < browser.saes[name].stats.top_values.shape[0]:
            return Route("latent", name, latent)
    return None


def render(browser: Browser, page: Route) -> str:
    if page.kind == "overview":
        return overview_page(browser.title, browser.saes)
    data = browser.saes[page.sae]  # type: ignore[index]
    if page.kind == "list":
        return latent_list_page(browser.title, data)
    return latent_page(browser.title, data, page.latent)  # type: ignore[arg-type]


def make_server(browser: Browser, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """An HTTP server for ``browser`` (port 0: any free port; ``server.server_address`` tells which)."""
    list_page = lru_cache(maxsize=64)(lambda name: latent_list_page(browser.title, browser.saes[name]))
    local_only = is_loopback(host)

    class Handler(BaseHTTPRequestHandler):
        server_version = "saekit-browser"
        sys_version = ""
        default_request_version = "HTTP/1.0"  # so that even a garbled request line gets headers back

        def parse_request(self) -> bool:
            if not super().parse_request():
                return False
            self.close_connection = True  # one request per connection: an unread body never becomes the next request
            if self.command not in _METHODS:
                self._send(HTTPStatus.METHOD_NOT_ALLOWED, "only GET and HEAD", {"Allow": ", ".join(_METHODS)})
                return False
            if local_only and not host_allowed(self.headers.get("Host")):
                self._send(HTTPStatus.FORBIDDEN, "this server answers only requests for localhost")
                return False
            return True

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            try:
                page = route(browser, self.path)
            except BadRequest as exc:
                return self._send(HTTPStatus.BAD_REQUEST, f"bad request: {exc}")
            if page is None:
                return self._send(HTTPStatus.NOT_FOUND, "no such page")
            body = list_page(page.sae) if page.kind == "list" else render(browser, page)
            self._send(HTTPStatus.OK, body, html=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self.do_GET()

        def _send(self, status: HTTPStatus, text: str, headers: dict[str, str] | None = None, html: bool = False) -> None:
            data = text.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8" if html else "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def end_headers(self) -> None:
            for name, value in _HEADERS:
                self.send_header(name, value)
            super().end_headers()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # a page view is not worth a line on the terminal

    return ThreadingHTTPServer((host, port), Handler)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name, without port) is this machine only."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost" or host.endswith(".localhost")


def host_allowed(header: str | None) -> bool:
    """Whether a request with this Host header may be answered by a server bound to loopback:
    a loopback name or address, with any port (no header: a client other than a browser)."""
    if header is None:
        return True
    try:
        name = urlsplit(f"//{header}").hostname
    except ValueError:
        return False
    return name is not None and is_loopback(name)


def serve_in_thread(browser: Browser, host: str = "127.0.0.1", port: int = 0) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Start a server on a daemon thread; stop it with ``server.shutdown()``."""
    server = make_server(browser, host, port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread
