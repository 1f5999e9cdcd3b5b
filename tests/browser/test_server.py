"""The server binds to loopback by default, answers only GET and HEAD for loopback names, sends its
security headers with every response (the stdlib's own error pages included), answers malformed
requests with a 4xx and never reads a file, so no path or symbolic link leaves the site."""

import socket

import pytest
from browser_helpers import tiny_browser

from saekit.browser import make_server, serve_in_thread
from saekit.browser.server import host_allowed, is_loopback
from saekit.cli.main import build_parser

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def port(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    (root / "leak").symlink_to("/etc")  # a link out of the site's folder, on disk
    server, _ = serve_in_thread(tiny_browser(root))
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` as it is; (status, headers, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(raw)
        conn.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, body


def get(port: int, path: str, host: str = "localhost") -> tuple[int, dict[str, str], bytes]:
    return exchange(port, f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode("latin-1"))


def test_loopback_is_the_default_everywhere(tmp_path):
    server = make_server(tiny_browser(tmp_path), port=0)
    assert server.server_address[0] == "127.0.0.1"
    server.server_close()
    assert build_parser().parse_args(["browse", "suite"]).host == "127.0.0.1"


@pytest.mark.parametrize(
    "raw, status",
    [
        (b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", 200),
        (b"HEAD / HTTP/1.0\r\n\r\n", 200),
        (b"GET /no-such-page HTTP/1.0\r\n\r\n", 404),
        (b"GET /%2e%2e/etc/passwd HTTP/1.0\r\n\r\n", 400),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/one\r\n\r\n", 400),
        (b"GET / HTTP/1.1 extra\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # a TLS hello
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.0\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(120)) + b"\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello", 405),
        (b"BREW / HTTP/1.1\r\nHost: localhost\r\n\r\n", 405),
        (b"GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n", 403),
    ],
)
def test_every_answer_is_a_status_with_the_security_headers(port, raw, status):
    code, headers, _ = exchange(port, raw)
    assert code == status
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["Referrer-Policy"] == "no-referrer"
    if status == 405:
        assert headers["Allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    "host, allowed",
    [
        ("localhost:8000", True), ("LOCALHOST", True), ("127.0.0.1:1", True), ("127.1.2.3", True), ("[::1]:80", True),
        ("app.localhost", True), ("evil.example", False), ("evil.example:8000", False), ("localhost@evil.example", False),
        ("localhost.evil.example", False), ("127.0.0.1.nip.io", False), ("[::1", False), ("", False),
    ],
)  # fmt: skip
def test_only_loopback_hosts_are_answered(port, host, allowed):
    assert host_allowed(host) is allowed
    assert get(port, "/", host)[0] == (200 if allowed else 403)


def test_a_request_without_host_is_answered_and_names_are_classified():
    assert host_allowed(None)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.1") and not is_loopback("example.com")


@pytest.mark.parametrize(
    "path",
    ["/leak/passwd", "/leak", "/tiny/leak/passwd", "http://localhost/etc/passwd", "//etc/passwd", "/%2Fetc%2Fpasswd",
     "/C:/Windows/win.ini", "/tiny/latent/6.html", "/tiny/browser-cache/meta.json"],
)  # fmt: skip
def test_no_file_is_served(port, path):
    code, _, body = get(port, path)
    assert code == 404 and b"root:" not in body
