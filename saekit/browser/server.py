"""Serve the pages on localhost (stdlib ``http.server``); :mod:`saekit.browser.export` writes them as files.

The server opens no file named by a URL, so no path, encoded or not, and no symbolic link can reach
a file: a request path is decoded, checked segment by segment and matched against fixed patterns
whose parts are looked up in memory (an SAE name among the suite's names, a store file among
:data:`FILES`). Anything with ``.``/``..`` segments, a backslash, a NUL or an undecodable escape is
a 400; anything else that does not match is a 404. GET and HEAD are answered, and POST only at
``api/live`` when the server was given a :class:`~saekit.browser.live.LiveModel` (405 otherwise),
with a JSON body of at most :data:`MAX_BODY` bytes. Bound to a loopback address (the default), it
answers only requests addressed to a loopback name or address, so a web page whose domain is rebound
to 127.0.0.1 cannot read the pages (403); a POST must also be ``application/json`` (which a foreign
page cannot send without a CORS preflight, never granted) from no or a loopback ``Origin``. Every
response, the stdlib's own error pages included, carries the pages' CSP, ``nosniff`` and
``no-referrer``. The store's ``.bin`` files answer single-range requests (206), so the latent page
reads one latent's record, not the file.
"""

from __future__ import annotations

import ipaddress
import json
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from saekit.bounded import decode_utf8, parse_json
from saekit.browser.live import MAX_CHARS, LiveModel
from saekit.browser.page_data import FILES, store_files
from saekit.browser.pages import CSP, latent_list_page, latent_page, live_page, overview_page
from saekit.browser.search import search_latents
from saekit.browser.store import Browser
from saekit.errors import ConfigError

MAX_BODY = 32 * 1024
"""Largest request body read (a live text of MAX_CHARS characters, each JSON-escaped to at most 12 bytes, fits)."""
_RANGE = re.compile(r"bytes=([0-9]{1,15})-([0-9]{1,15})")
_HEADERS = (("Content-Security-Policy", CSP), ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"))
"""Sent with every response."""
_TYPES = {"html": "text/html; charset=utf-8", "json": "application/json", "bin": "application/octet-stream"}


@dataclass(frozen=True)
class Route:
    """A page or file: ``kind`` "overview", "live", "list", "latent", "file" or "search", with its SAE
    name and store file name where it has them."""

    kind: str
    sae: str | None = None
    file: str | None = None


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
    if parts in (["live.html"], ["api", "live"]):
        return Route("live", file=parts[-1])
    name, rest = parts[0], parts[1:]
    if name not in browser.saes:
        return None
    if rest in ([], [""], ["index.html"]):
        return Route("list", name)
    if rest == ["latent.html"]:
        return Route("latent", name)
    if rest == ["search.json"]:
        return Route("search", name)
    if len(rest) == 1 and rest[0] in FILES:
        return Route("file", name, rest[0])
    return None


def render(browser: Browser, page: Route) -> str:
    """The HTML of an overview, list or latent page."""
    if page.kind == "overview":
        return overview_page(browser.title, browser.saes)
    data = browser.saes[page.sae]  # type: ignore[index]
    if page.kind == "list":
        return latent_list_page(browser.title, data)
    return latent_page(browser.title, data)


def search_answer(browser: Browser, sae: str, query: str) -> dict:
    """The JSON answer of ``<sae>/search.json?q=query``."""
    hits = search_latents(browser.saes[sae], query)
    return {"sae": sae, "query": query, "hits": [
        {"latent": h.latent, "top_tokens": [list(t) for t in h.top_tokens], "explanation": h.explanation} for h in hits
    ]}  # fmt: skip


def live_answer(live: LiveModel, body: bytes) -> dict:
    """The JSON answer of a POST to ``api/live`` with ``body`` ``{"sae": name, "text": text}``; a
    ConfigError naming what is wrong with the body."""
    raw = parse_json(decode_utf8(body, "the request body", ConfigError), "the request body", ConfigError)
    if not isinstance(raw, dict) or not isinstance(raw.get("sae"), str) or not isinstance(raw.get("text"), str):
        raise ConfigError('the request body must be {"sae": name, "text": text}')
    result = live.run(raw["sae"], raw["text"])
    return {"sae": result.sae, "truncated": result.truncated, "tokens": [
        {"text": t.text, "latents": [list(x) for x in t.latents]} for t in result.tokens
    ]}  # fmt: skip


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The [start, end) bytes a ``Range`` header asks for, when it is one satisfiable range; None: the whole file."""
    m = _RANGE.fullmatch(header.strip()) if header else None
    if m is None:
        return None
    start, last = int(m.group(1)), int(m.group(2))
    return (start, last + 1) if start <= last < size else None


def make_server(
    browser: Browser, host: str = "127.0.0.1", port: int = 8000, live: LiveModel | None = None
) -> ThreadingHTTPServer:
    """An HTTP server for ``browser`` (port 0: any free port; ``server.server_address`` tells which);
    with ``live``, also the live page and its ``api/live``."""
    site = _Site(browser, live)
    local_only = is_loopback(host)

    class Handler(_Handler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            page = self.resolve()
            if page is None:
                return
            try:
                data, kind = site.answer(page, urlsplit(self.path).query)
            except LookupError:
                return self.send(HTTPStatus.NOT_FOUND, b"no such page")
            except ConfigError as exc:
                return self.send(HTTPStatus.BAD_REQUEST, json.dumps({"error": str(exc)}).encode(), "json")
            span = byte_range(self.headers.get("Range"), len(data)) if kind == "bin" else None
            if span is None:
                return self.send(HTTPStatus.OK, data, kind)
            extra = {"Content-Range": f"bytes {span[0]}-{span[1] - 1}/{len(data)}"}
            self.send(HTTPStatus.PARTIAL_CONTENT, data[span[0] : span[1]], kind, extra)

        def do_POST(self) -> None:  # noqa: N802
            page = self.resolve()
            if page is None:
                return
            if live is None or page != Route("live", file="live"):
                return self.send(HTTPStatus.METHOD_NOT_ALLOWED, b"only GET and HEAD here", headers={"Allow": "GET, HEAD"})
            problem = self.post_problem()
            if problem:
                return self.send(problem[0], json.dumps({"error": problem[1]}).encode(), "json")
            try:
                result = live_answer(live, self.rfile.read(int(self.headers["Content-Length"])))
            except ConfigError as exc:
                return self.send(HTTPStatus.BAD_REQUEST, json.dumps({"error": str(exc)}).encode(), "json")
            self.send(HTTPStatus.OK, json.dumps(result).encode(), "json")

    Handler.local_only, Handler.browser = local_only, browser
    return ThreadingHTTPServer((host, port), Handler)


class _Site:
    """What the server answers with, made on first request and kept: the pages and each SAE's store files."""

    def __init__(self, browser: Browser, live: LiveModel | None) -> None:
        self.browser, self.live = browser, live
        self.list_page = lru_cache(maxsize=64)(lambda name: latent_list_page(browser.title, browser.saes[name]))
        self.files = lru_cache(maxsize=16)(lambda name: store_files(browser.title, browser.saes[name]))

    def answer(self, page: Route, query: str) -> tuple[bytes, str]:
        """The body and kind ("html", "json", "bin") of ``page``; LookupError when there is none."""
        if page.kind == "file":
            found = self.files(page.sae).get(page.file or "")
            if found is None:
                raise LookupError(page.file)
            return found, "json" if page.file == "page.json" else "bin"
        if page.kind == "search":
            q = parse_qs(query).get("q", [""])[0]
            return json.dumps(search_answer(self.browser, page.sae, q)).encode(), "json"  # type: ignore[arg-type]
        if page.kind == "live":
            if self.live is None or page.file != "live.html":
                raise LookupError(page.file)
            return live_page(self.browser.title, list(self.live.saes), MAX_CHARS).encode(), "html"
        body = self.list_page(page.sae) if page.kind == "list" else render(self.browser, page)
        return body.encode(), "html"


class _Handler(BaseHTTPRequestHandler):
    """What every request gets: the method and Host checks, the security headers, one request per
    connection; the routes are :func:`make_server`'s."""

    server_version = "saekit-browser"
    sys_version = ""
    default_request_version = "HTTP/1.0"  # so that even a garbled request line gets headers back
    local_only = True
    browser: Browser

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        self.close_connection = True  # one request per connection: an unread body never becomes the next request
        if self.command not in ("GET", "HEAD", "POST"):
            self.send(HTTPStatus.METHOD_NOT_ALLOWED, b"only GET and HEAD", headers={"Allow": "GET, HEAD"})
            return False
        if self.local_only and not host_allowed(self.headers.get("Host")):
            self.send(HTTPStatus.FORBIDDEN, b"this server answers only requests for localhost")
            return False
        return True

    def resolve(self) -> Route | None:
        """The request's route, or None once a 400 or 404 is sent."""
        try:
            page = route(self.browser, self.path)
        except BadRequest as exc:
            self.send(HTTPStatus.BAD_REQUEST, f"bad request: {exc}".encode())
            return None
        if page is None:
            self.send(HTTPStatus.NOT_FOUND, b"no such page")
        return page

    def post_problem(self) -> tuple[HTTPStatus, str] | None:
        """Why a POST's headers are refused: not JSON (a foreign page's form or simple request), a
        foreign Origin, no or too large a body; None if they are fine."""
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            return HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "the body must be application/json"
        origin = self.headers.get("Origin")
        if origin is not None and not host_allowed(urlsplit(origin).netloc or "\x00"):
            return HTTPStatus.FORBIDDEN, "this server answers only pages of localhost"
        length = self.headers.get("Content-Length") or ""
        if not length.isascii() or not length.isdigit():
            return HTTPStatus.LENGTH_REQUIRED, "a POST needs a Content-Length"
        if int(length) > MAX_BODY:
            return HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is larger than {MAX_BODY:,} bytes"
        return None

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        self.send(HTTPStatus.NOT_FOUND, b"no such page")

    def send(self, status: HTTPStatus, data: bytes, kind: str = "text", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", _TYPES.get(kind, "text/plain; charset=utf-8"))
        self.send_header("Content-Length", str(len(data)))
        if kind == "bin":
            self.send_header("Accept-Ranges", "bytes")
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


def serve_in_thread(
    browser: Browser, host: str = "127.0.0.1", port: int = 0, live: LiveModel | None = None
) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Start a server on a daemon thread; stop it with ``server.shutdown()``."""
    server = make_server(browser, host, port, live)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread
