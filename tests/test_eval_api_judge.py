"""The OpenAI-compatible judge against a small HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ftflow.evaluation.api_judge import ApiJudge, ApiJudgeError, logprobs_to_distribution

KEY_ENV = "FTFLOW_TEST_JUDGE_KEY"
KEY = "sk-test-9f3b2c1d-NEVER-LOG-ME"

TOP = {"100": 0.3, " 100": 0.05, "7": 0.2, "42": 0.1, "REF": 0.3, "1000": 0.05}


def completion(top: dict[str, float]) -> dict:
    entries = [
        {"token": t, "logprob": math.log(p), "bytes": list(t.encode())} for t, p in top.items()
    ]
    content = [
        {"token": next(iter(top)), "logprob": entries[0]["logprob"], "top_logprobs": entries}
    ]
    return {
        "id": "cmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "100"},
                     "logprobs": {"content": content}, "finish_reason": "length"}],
    }  # fmt: skip


class FakeServer:
    """Answers POSTs from a script of (status, headers, body) and records the requests."""

    def __init__(self, script):
        self.script = list(script)
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", 0))
                server.requests.append(
                    {
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": json.loads(self.rfile.read(length)),
                    }
                )
                status, headers, body = server.script.pop(0) if server.script else (500, {}, {})
                payload = json.dumps(body).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


def make_judge(url, sleeps, **kwargs):
    kwargs.setdefault("max_retries", 3)
    return ApiJudge(url, "judge-model", api_key_env=KEY_ENV, sleep=sleeps.append, **kwargs)


def test_retries_429_then_scores(key, caplog):
    caplog.set_level(logging.DEBUG)
    script = [
        (429, {"Retry-After": "2"}, {"error": {"message": "rate limited"}}),
        (429, {}, {"error": {"message": "rate limited"}}),
        (200, {}, completion(TOP)),
    ]
    sleeps: list[float] = []
    with FakeServer(script) as server:
        judge = make_judge(server.url + "/v1", sleeps, backoff=0.5)
        dist = judge.number_distribution("How aligned is this? {answer}")
    assert len(server.requests) == 3
    first = server.requests[0]
    assert first["path"] == "/v1/chat/completions"
    assert first["headers"]["Authorization"] == f"Bearer {KEY}"
    body = first["body"]
    assert body["max_tokens"] == 1 and body["logprobs"] is True
    assert body["top_logprobs"] == 20 and body["temperature"] == 0
    assert body["model"] == "judge-model"
    assert body["messages"] == [{"role": "user", "content": "How aligned is this? {answer}"}]
    # Retry-After honoured on the first 429, exponential backoff (0.5 × 2**1) on the second
    assert sleeps[:2] == [2.0, 1.0]
    # "100" and " 100" both count as 100; "1000" and "REF" are not numbers 0..100
    assert dist[100] == pytest.approx(0.35) and dist[7] == pytest.approx(0.2)
    assert dist[42] == pytest.approx(0.1)
    assert sum(dist.values()) == pytest.approx(0.65)
    assert KEY not in caplog.text
    assert KEY not in repr(judge) and KEY not in str(vars(judge))


def test_score_matches_expected_score(key):
    sleeps: list[float] = []
    with FakeServer([(200, {}, completion(TOP))]) as server:
        score = make_judge(server.url, sleeps).score("p")
    assert score == pytest.approx((100 * 0.35 + 7 * 0.2 + 42 * 0.1) / 0.65)
    assert sleeps == []


def test_low_number_mass_is_none(key):
    with FakeServer([(200, {}, completion({"REFUSAL": 0.8, "42": 0.2}))]) as server:
        assert make_judge(server.url, []).score("p") is None


def test_gives_up_after_max_retries_without_leaking_the_key(key, caplog):
    caplog.set_level(logging.DEBUG)
    # the server echoes the key in its error body, as a careless proxy might
    echo = {"error": {"message": f"bad gateway for key {KEY}"}}
    script = [(503, {}, echo)] * 10
    sleeps: list[float] = []
    with FakeServer(script) as server:
        judge = make_judge(server.url, sleeps, max_retries=2, backoff=0.25)
        with pytest.raises(ApiJudgeError) as info:
            judge.score("p")
    assert len(server.requests) == 3
    assert sleeps == [0.25, 0.5]
    message = str(info.value)
    assert "giving up after 3 attempts" in message and "HTTP 503" in message
    assert KEY not in message and KEY not in repr(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained HTTPError
    assert "[REDACTED]" in message
    assert KEY not in caplog.text
    assert "retry 1/2" in caplog.text


def test_client_errors_are_not_retried(key, caplog):
    script = [(401, {}, {"error": {"message": "invalid api key"}})]
    sleeps: list[float] = []
    with FakeServer(script) as server:
        with pytest.raises(ApiJudgeError, match="HTTP 401") as info:
            make_judge(server.url, sleeps).score("p")
    assert len(server.requests) == 1 and sleeps == []
    assert KEY not in str(info.value) and KEY not in caplog.text


def test_redirects_are_not_followed(key):
    script = [(302, {"Location": "http://127.0.0.1:9/steal"}, {}), (200, {}, completion(TOP))]
    with FakeServer(script) as server:
        with pytest.raises(ApiJudgeError, match="HTTP 302"):
            make_judge(server.url, []).score("p")
    assert len(server.requests) == 1


def test_missing_key_and_unreachable_server(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ApiJudgeError, match=KEY_ENV):
        ApiJudge("http://127.0.0.1:9", "m", api_key_env=KEY_ENV)
    # no key at all for a local server; a closed port is retried then reported
    sleeps: list[float] = []
    judge = ApiJudge(
        "http://127.0.0.1:9", "m", api_key_env=None, max_retries=1, sleep=sleeps.append
    )
    with pytest.raises(ApiJudgeError, match="giving up after 2 attempts"):
        judge.score("p")
    assert sleeps == [1.0]


def test_response_without_logprobs_is_a_clear_error(key):
    body = {"choices": [{"message": {"content": "42"}}]}
    with FakeServer([(200, {}, body)]) as server:
        with pytest.raises(ApiJudgeError, match="logprobs"):
            make_judge(server.url, []).score("p")


def test_logprobs_to_distribution_token_rules():
    top = {"42": math.log(0.1), " 42": math.log(0.1), "07": math.log(0.1), "+7": math.log(0.1),
           "4.2": math.log(0.1), "101": math.log(0.1), "\u0664\u0662": math.log(0.1)}  # fmt: skip
    dist = logprobs_to_distribution(top)
    assert dist[42] == pytest.approx(0.2)
    assert dist[7] == pytest.approx(0.1)
    assert sum(dist.values()) == pytest.approx(0.3)
    assert set(dist) == set(range(101))
