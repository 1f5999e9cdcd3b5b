"""The one client of an OpenAI-compatible chat-completions endpoint (a local llama.cpp or vLLM server,
or a hosted one), on the standard library's ``http.client``: no SDK.

:meth:`ChatClient.complete` sends one conversation and returns the answer's text. What can go wrong
splits in two:

* the endpoint cannot be used (unreachable, a refusal such as 401/403/404, or a transient failure
  (timeout, 429, 5xx) still there after ``retries`` tries with exponential backoff, honouring a 429's
  ``Retry-After``): :class:`~saekit.errors.EndpointError`, which stops a run;
* one answer is unusable (a 200 whose body is not JSON, or lacks ``choices[0].message.content``):
  :class:`AnswerError`, which makes one item count as failed.

Every request has a deadline (``timeout_s`` for the whole answer, not per read), and an answer is
read up to :data:`MAX_ANSWER_BYTES`, so nothing hangs and nothing fills the memory. The API key is
read from the environment variable named in the config, so it is never on a command line or in a
saved file, and it is never put in a message.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import json
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from saekit.errors import ConfigError, EndpointError, SaekitError

MAX_ANSWER_BYTES = 8 << 20
"""Largest HTTP body read from the endpoint (8 MiB); a chat answer is a few kB."""
_RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}


class AnswerError(SaekitError, ValueError):
    """One answer of the endpoint is unusable: not JSON, missing fields, or not in the asked format."""


@dataclass(frozen=True)
class EndpointConfig:
    base_url: str
    """The API's base URL, e.g. http://127.0.0.1:8080/v1 (llama.cpp) or https://api.openai.com/v1;
    requests go to <base_url>/chat/completions."""
    model: str
    """The model name sent with each request."""
    api_key_env: str | None = None
    """Name of the environment variable that holds the API key (sent as a Bearer token); None: no key."""
    timeout_s: float = 120.0
    """Deadline of one request, connection to the last byte of the answer."""
    retries: int = 4
    """Tries after the first for a timeout, a lost connection, 429 or 5xx."""
    backoff_s: float = 1.0
    """Wait before the first retry, doubled at each further one (a 429's Retry-After wins)."""
    max_backoff_s: float = 60.0
    """Longest wait between tries, whatever Retry-After asks."""
    concurrency: int = 4
    """Requests in flight at once."""
    temperature: float = 0.0
    max_tokens: int = 512

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"endpoint {self.base_url!r} is not an http(s) URL")
        if parts.username is not None or parts.password is not None:
            raise ConfigError("the endpoint URL holds a user or password: pass the key in an environment variable (api_key_env)")
        if not self.model:
            raise ConfigError("the endpoint's model name is empty")
        if self.timeout_s <= 0 or self.backoff_s < 0 or self.max_backoff_s < 0 or self.retries < 0:
            raise ConfigError("timeout_s must be positive and retries, backoff_s, max_backoff_s at least 0")
        if self.concurrency < 1 or self.max_tokens < 1:
            raise ConfigError(f"concurrency and max_tokens must be at least 1, got {self.concurrency} and {self.max_tokens}")


class ChatClient:
    """Sends conversations to one endpoint; safe to share between threads (at most ``concurrency``
    requests are in flight)."""

    def __init__(self, cfg: EndpointConfig, *, sleep: Callable[[float], object] | None = None) -> None:
        """``sleep``: the wait between tries (default: one that :meth:`stop` ends; tests record it)."""
        self.cfg = cfg
        self._key = _api_key(cfg.api_key_env)
        self._url = urlsplit(cfg.base_url.rstrip("/") + "/chat/completions")
        self._slots = threading.BoundedSemaphore(cfg.concurrency)
        self._stopped = threading.Event()
        self._sleep = sleep if sleep is not None else self._stopped.wait  # a wait that stop() ends

    def stop(self) -> None:
        """End every wait between tries and refuse every further request (EndpointError): a run
        that stops (an error, Ctrl-C) does not wait for other threads' retries."""
        self._stopped.set()

    def complete(self, messages: list[dict[str, str]]) -> str:
        """The text of the endpoint's answer to ``messages``."""
        body = {"model": self.cfg.model, "messages": messages, "temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens}
        payload = json.dumps(body).encode()
        for attempt in range(self.cfg.retries + 1):
            if self._stopped.is_set():
                raise EndpointError(f"{self.cfg.base_url}: not asked, the run is stopping")
            with self._slots:
                status, headers, data, problem = self._post(payload)
            if problem is None and status == 200:
                return _answer_text(data)
            if problem is None and status not in _RETRYABLE:
                raise EndpointError(f"{self.cfg.base_url} refused the request: HTTP {status}{_detail(data)}")
            why = problem or f"HTTP {status}{_detail(data)}"
            if attempt == self.cfg.retries:
                raise EndpointError(f"{self.cfg.base_url} still failing after {attempt + 1} tries: {why}")
            self._sleep(self._wait(attempt, headers.get("retry-after") if status == 429 else None))
        raise AssertionError("unreachable")

    def _wait(self, attempt: int, retry_after: str | None) -> float:
        wait = self.cfg.backoff_s * 2**attempt
        asked = _retry_after_s(retry_after)
        if asked is not None:
            wait = asked
        return min(max(wait, 0.0), self.cfg.max_backoff_s)

    def _post(self, payload: bytes) -> tuple[int, dict[str, str], bytes, str | None]:
        """(status, headers in lower case, body, None), or (0, {}, b"", why) when no answer came. A
        watchdog shuts the socket at the deadline, so that a server sending its headers or body a
        byte at a time cannot outlast it (a socket timeout bounds each read, not their sum)."""
        deadline = time.monotonic() + self.cfg.timeout_s
        cls = http.client.HTTPSConnection if self._url.scheme == "https" else http.client.HTTPConnection
        conn = cls(self._url.hostname or "", self._url.port, timeout=self.cfg.timeout_s)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        path = self._url.path + (f"?{self._url.query}" if self._url.query else "")
        expired = threading.Event()
        try:
            conn.connect()
            watchdog = threading.Timer(max(deadline - time.monotonic(), 0.0), _cut, (conn.sock, expired))
            watchdog.daemon = True
            watchdog.start()
            try:
                conn.request("POST", path, body=payload, headers=headers)
                response = conn.getresponse()
                data = _read_body(response)
            finally:
                watchdog.cancel()
            if expired.is_set():
                raise TimeoutError
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data, None
        except (OSError, http.client.HTTPException) as exc:
            if expired.is_set() or isinstance(exc, TimeoutError):
                return 0, {}, b"", f"no complete answer within {self.cfg.timeout_s:g} s"
            return 0, {}, b"", f"connection failed ({type(exc).__name__}: {exc})"
        except AnswerError as exc:
            return 0, {}, b"", str(exc)
        finally:
            conn.close()


def _cut(sock: socket.socket | None, expired: threading.Event) -> None:
    """The watchdog: mark the request expired and shut its socket, which ends any read in progress."""
    expired.set()
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _read_body(response: http.client.HTTPResponse) -> bytes:
    """The body, up to :data:`MAX_ANSWER_BYTES`."""
    chunks, size = [], 0
    while chunk := response.read1(65536):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise AnswerError(f"answer larger than {MAX_ANSWER_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _answer_text(data: bytes) -> str:
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise AnswerError(f"the answer is not JSON ({exc})") from None
    try:
        text = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise AnswerError("the answer has no choices[0].message.content") from None
    if not isinstance(text, str):
        raise AnswerError(f"choices[0].message.content is {type(text).__name__}, not text")
    return text


def _detail(data: bytes) -> str:
    """A short, printable excerpt of an error body."""
    text = data[:200].decode("utf-8", "replace").strip()
    text = "".join(c if c.isprintable() else " " for c in text)
    return f": {text}" if text else ""


def _retry_after_s(value: str | None) -> float | None:
    """Seconds asked by a Retry-After header (a number or an HTTP date); None when absent or unreadable."""
    if value is None:
        return None
    try:
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when.timestamp() - time.time()


def _api_key(env: str | None) -> str | None:
    if env is None:
        return None
    key = os.environ.get(env)
    if not key:
        raise ConfigError(f"the environment variable {env} (the API key) is not set or empty")
    return key
