"""A loopback stand-in for an OpenAI-compatible ``POST /v1/chat/completions``: each request's JSON body
goes to ``respond(body)``, which returns what to send back (a status, headers, a body and an optional
delay), so a test decides every answer, well-formed or not. Requests are recorded."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple


class Reply(NamedTuple):
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = {}
    delay_s: float = 0.0
    """Seconds before the answer is sent; with ``drip``, between each byte of what it names."""
    drip: str = ""
    """"body": the headers at once, then the body a byte at a time; "head": the status line and
    headers a byte at a time too."""


def chat_reply(text: str) -> Reply:
    """A 200 answer in the API's format whose message content is ``text``."""
    body = {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "stub",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }  # fmt: skip
    return Reply(200, json.dumps(body).encode())


class StubChat:
    """``with StubChat(respond) as stub: EndpointConfig(stub.url, "m")``; ``stub.requests`` holds
    (path, headers, JSON body) of each request."""

    def __init__(self, respond: Callable[[dict[str, Any]], Reply]) -> None:
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                with stub.lock:
                    stub.requests.append((self.path, dict(self.headers), body))
                reply = respond(body) if self.path == "/v1/chat/completions" else Reply(404, b'{"error": "not found"}')
                head = f"HTTP/1.1 {reply.status} Stub\r\n" + "".join(
                    f"{k}: {v}\r\n" for k, v in {**reply.headers, "Content-Length": str(len(reply.body))}.items()
                )
                raw = (head + "\r\n").encode() + reply.body
                slow_from = {"": len(raw), "body": len(raw) - len(reply.body), "head": 0}[reply.drip]
                if not reply.drip:
                    time.sleep(reply.delay_s)
                try:
                    self.wfile.write(raw[:slow_from])
                    for i in range(slow_from, len(raw)):
                        self.wfile.flush()
                        time.sleep(reply.delay_s)
                        self.wfile.write(raw[i : i + 1])
                    self.wfile.flush()
                except OSError:
                    pass  # the client gave up first
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> StubChat:
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
