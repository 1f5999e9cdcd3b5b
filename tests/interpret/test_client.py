"""The chat-completions client against a loopback stub: every way an endpoint fails is a saekit error
(EndpointError stops a run, AnswerError fails one item), retried where it may pass, never a hang."""

import json
import re
import threading
import time

import pytest
from chat_server import Reply, StubChat, chat_reply

from saekit.errors import ConfigError, EndpointError
from saekit.interpret.client import AnswerError, ChatClient, EndpointConfig

MESSAGES = [{"role": "user", "content": "hi"}]


def client(stub, sleeps=None, **settings):
    cfg = EndpointConfig(stub.url, "stub-model", **{"retries": 2, "backoff_s": 0.5, "timeout_s": 5.0, **settings})
    return ChatClient(cfg, sleep=(sleeps.append if sleeps is not None else lambda s: None))


def test_an_answer_in_the_api_format_and_the_request_sent(monkeypatch):
    monkeypatch.setenv("STUB_KEY", "sk-secret")
    with StubChat(lambda body: chat_reply("hello")) as stub:
        assert client(stub, api_key_env="STUB_KEY").complete(MESSAGES) == "hello"
    path, headers, body = stub.requests[0]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer sk-secret"
    assert body["model"] == "stub-model" and body["messages"] == MESSAGES


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_a_refusal_stops_at_once_naming_the_url_not_the_key(monkeypatch, status):
    monkeypatch.setenv("STUB_KEY", "sk-secret")
    with StubChat(lambda body: Reply(status, b'{"error": "invalid api key"}')) as stub:
        with pytest.raises(EndpointError, match=f"refused the request: HTTP {status}: .*invalid api key") as caught:
            client(stub, api_key_env="STUB_KEY").complete(MESSAGES)
    assert stub.url in str(caught.value) and "sk-secret" not in str(caught.value)
    assert len(stub.requests) == 1


def test_transient_failures_are_retried_with_exponential_backoff():
    replies = iter([Reply(503, b"busy"), Reply(500, b""), chat_reply("at last")])
    sleeps = []
    with StubChat(lambda body: next(replies)) as stub:
        assert client(stub, sleeps).complete(MESSAGES) == "at last"
    assert sleeps == [0.5, 1.0]


def test_a_rate_limit_waits_as_retry_after_says_within_the_cap():
    replies = iter([Reply(429, b"slow down", {"Retry-After": "7"}), Reply(429, b"", {"Retry-After": "999"}), chat_reply("ok")])
    sleeps = []
    with StubChat(lambda body: next(replies)) as stub:
        assert client(stub, sleeps, max_backoff_s=30).complete(MESSAGES) == "ok"
    assert sleeps == [7.0, 30]


def test_failures_that_outlast_the_retries_stop_the_run():
    sleeps = []
    with StubChat(lambda body: Reply(429, b"quota", {"Retry-After": "nonsense"})) as stub:
        with pytest.raises(EndpointError, match="still failing after 3 tries: HTTP 429: quota"):
            client(stub, sleeps).complete(MESSAGES)
    assert sleeps == [0.5, 1.0]  # an unreadable Retry-After: the backoff


@pytest.mark.parametrize("drip", ["", "body", "head"])
def test_a_slow_or_dripping_server_times_out_within_the_deadline(drip):
    slow = Reply(200, chat_reply("late").body, delay_s=0.05 if drip else 3.0, drip=drip)
    with StubChat(lambda body: slow) as stub:
        started = time.monotonic()
        with pytest.raises(EndpointError, match="no complete answer within 0.5 s"):
            client(stub, timeout_s=0.5, retries=1).complete(MESSAGES)
    assert time.monotonic() - started < 3.0  # two tries of 0.5 s, not the server's pace


def test_an_unreachable_endpoint_is_an_endpoint_error():
    with StubChat(lambda body: chat_reply("x")) as stub:
        url = stub.url
    with pytest.raises(EndpointError, match="still failing after 2 tries: connection failed"):
        ChatClient(EndpointConfig(url, "m", retries=1, backoff_s=0)).complete(MESSAGES)


@pytest.mark.parametrize(
    "body, words",
    [
        (b"<html>gateway</html>", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"{}", "no choices[0].message.content"),
        (json.dumps({"choices": []}).encode(), "no choices[0].message.content"),
        (json.dumps({"choices": [{"message": {"role": "assistant"}}]}).encode(), "no choices[0].message.content"),
        (json.dumps({"choices": [{"message": {"content": None}}]}).encode(), "content is NoneType, not text"),
        (json.dumps([1, 2]).encode(), "no choices[0].message.content"),
    ],
)
def test_a_malformed_answer_is_an_answer_error(body, words):
    with StubChat(lambda request: Reply(200, body)) as stub:
        with pytest.raises(AnswerError, match=re.escape(words)):
            client(stub).complete(MESSAGES)


def test_an_oversized_answer_is_refused(monkeypatch):
    from saekit.interpret import client as client_module

    monkeypatch.setattr(client_module, "MAX_ANSWER_BYTES", 100)
    with StubChat(lambda body: chat_reply("x" * 200)) as stub:
        with pytest.raises(EndpointError, match="answer larger than 100 bytes"):
            client(stub, retries=0).complete(MESSAGES)


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"base_url": "ftp://host/v1"}, "is not an http(s) URL"),
        ({"base_url": "localhost:8080"}, "is not an http(s) URL"),
        ({"base_url": "https://user:sk-secret@api.example.com/v1"}, "holds a user or password"),
        ({"model": ""}, "model name is empty"),
        ({"timeout_s": 0}, "timeout_s must be positive"),
        ({"concurrency": 0}, "concurrency and max_tokens must be at least 1"),
    ],
)
def test_impossible_settings_are_config_errors(settings, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        EndpointConfig(**{"base_url": "http://127.0.0.1:1/v1", "model": "m", **settings})


def test_a_missing_api_key_variable_is_named(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(ConfigError, match="environment variable NO_SUCH_KEY"):
        ChatClient(EndpointConfig("http://127.0.0.1:1/v1", "m", api_key_env="NO_SUCH_KEY"))


def test_a_stopped_client_ends_its_waits_and_asks_no_more():
    with StubChat(lambda body: Reply(503, b"busy")) as stub:
        slow = ChatClient(EndpointConfig(stub.url, "m", retries=3, backoff_s=30.0))
        threading.Timer(0.3, slow.stop).start()
        started = time.monotonic()
        with pytest.raises(EndpointError, match="not asked, the run is stopping"):
            slow.complete(MESSAGES)
    assert time.monotonic() - started < 5 and len(stub.requests) == 1  # not 30 s of backoff, no second try
