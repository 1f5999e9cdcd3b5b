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
    """Seconds before the answer is sent; with ``drip``, between each of its bytes."""
    drip: bool = False


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
                if not reply.drip:
                    time.sleep(reply.delay_s)
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                try:
                    for i in range(len(reply.body)) if reply.drip else [None]:
                        self.wfile.write(reply.body if i is None else reply.body[i : i + 1])
                        self.wfile.flush()
                        if reply.drip:
                            time.sleep(reply.delay_s)
                except OSError:
                    pass  # the client gave up first

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> StubChat:
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
