"""0-100 judge scores from an OpenAI-compatible chat-completions endpoint (standard library only).

The paper's method (Betley et al. 2025): one request per filled judge prompt, sent as a single
user message with ``max_tokens=1, temperature=0, logprobs=true, top_logprobs=20, seed=0``; the
top-20 log-probabilities of the first answer token are turned into a distribution over 0..100
and scored with :func:`ftflow.evaluation.judge.expected_score` (probability-weighted mean,
normalised by the number mass, ``None`` below ``min_number_mass``, default 0.25).

What the numbers mean — precisely:

- A top-logprob token counts as the number n when its text is ASCII digits, optionally
  surrounded by whitespace, and ``0 <= int(text) <= 100`` ("42", " 42", "07" -> 7; not "+7",
  "4.2", "١٢"). Tokens that map to the same n are summed.
- This measures P(first token is n), not P(answer is n). It equals the answer distribution only
  if every number 0-100 is a single token of the judge's tokenizer — true for OpenAI's models,
  whose tokenizers (cl100k, o200k) cut digit runs into chunks of at most three digits, each a
  single token. With ``max_tokens=1`` the continuation is never seen, so a first token "100"
  followed by "0" (the answer 1000) counts as 100, and a first token that is a digit prefix of a
  longer number ("4" of "42", which a digit-splitting tokenizer would produce) counts as that
  prefix. On a judge whose tokenizer splits numbers, these scores are wrong: use the local
  judge (:mod:`ftflow.evaluation.judge`), which scores whole answers.
- Only the top 20 tokens are visible; mass outside them is treated as non-number, so the number
  mass is a lower bound.

Secrets: the API key is read from the environment variable ``api_key_env`` at each request and
sent only as an ``Authorization: Bearer`` header. It is never stored on the object, logged, or put
in an exception message (response bodies quoted in errors have it redacted). ``api_key_env=None``
sends no key (a local server without authentication).

Retries: HTTP 429 and 5xx, and network errors, are retried up to ``max_retries`` times, waiting
``Retry-After`` seconds when the server sends that header (capped at ``max_backoff``), else
``backoff × 2**attempt`` (also capped). Other HTTP errors fail at once, redirects included
(following one would resend the key to another address). Every failure raises
:class:`ApiJudgeError`.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from ftflow.evaluation.judge import DEFAULT_MIN_NUMBER_MASS, NUMBERS, expected_score

logger = logging.getLogger(__name__)

_NUMBER_TOKEN = re.compile(r"\s*([0-9]+)\s*")
_RETRY_STATUSES = frozenset({429}) | frozenset(range(500, 600))


class ApiJudgeError(RuntimeError):
    """The endpoint could not be reached, refused the request, or answered in an unknown format."""


class ApiJudge:
    """A 0-100 judge behind an OpenAI-compatible ``/v1/chat/completions`` endpoint.

    ``base_url``: e.g. ``https://api.openai.com`` or ``https://api.openai.com/v1`` (a trailing
    ``/v1`` is not doubled). ``sleep`` is injectable for tests.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        max_retries: int = 5,
        backoff: float = 1.0,
        *,
        max_backoff: float = 60.0,
        timeout: float = 60.0,
        top_logprobs: int = 20,
        min_number_mass: float = DEFAULT_MIN_NUMBER_MASS,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if max_retries < 0 or backoff < 0 or max_backoff < 0:
            raise ValueError("max_retries, backoff and max_backoff must be >= 0")
        root = base_url.rstrip("/")
        self.url = root + ("/chat/completions" if root.endswith("/v1") else "/v1/chat/completions")
        self.model = model
        self.api_key_env = api_key_env
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.top_logprobs = top_logprobs
        self.min_number_mass = min_number_mass
        self._sleep = sleep
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._api_key()  # fail early when the variable is missing; the key is not kept

    def __repr__(self) -> str:
        return f"ApiJudge(url={self.url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    # ---- public API

    def score(self, prompt: str) -> float | None:
        """The 0-100 score of one filled judge prompt, or None (see the module docstring)."""
        return expected_score(self.number_distribution(prompt), self.min_number_mass)

    def number_distribution(self, prompt: str) -> dict[int, float]:
        """P(first answer token is n) for n in 0..100 from the top logprobs (all 101 keys)."""
        return logprobs_to_distribution(self.top_logprobs_of(prompt))

    def top_logprobs_of(self, prompt: str) -> dict[str, float]:
        """Token -> log-probability of the first answer token (the top ``top_logprobs``)."""
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": self.top_logprobs,
            "seed": 0,
        }
        response = self._post(body)
        try:
            entries = response["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            return {str(e["token"]): float(e["logprob"]) for e in entries}
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ApiJudgeError(
                f"{self.url}: the response has no choices[0].logprobs.content[0].top_logprobs "
                f"({type(exc).__name__}: {exc}); does the endpoint support logprobs?"
            ) from None

    # ---- HTTP

    def _api_key(self) -> str | None:
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ApiJudgeError(
                f"the environment variable {self.api_key_env} (the judge's API key) is not set"
            )
        return key

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        key = self._api_key()
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        attempt = 0
        while True:
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    payload = response.read()
                try:
                    return json.loads(payload)
                except ValueError:
                    raise ApiJudgeError(f"{self.url}: the response is not JSON") from None
            except urllib.error.HTTPError as exc:
                status = exc.code
                detail = _redact(_read_body(exc), key)
                retry_after = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
                exc.close()
                if status not in _RETRY_STATUSES:
                    message = f"{self.url}: HTTP {status} {exc.reason}: {detail}".rstrip(": ")
                    raise ApiJudgeError(_redact(message, key)) from None
                problem = f"HTTP {status}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                retry_after = None
                reason = getattr(exc, "reason", exc)
                problem = _redact(f"{type(exc).__name__}: {reason}", key)
                detail = ""
            if attempt >= self.max_retries:
                message = f"{self.url}: giving up after {attempt + 1} attempts; last: {problem}"
                message += f": {detail}" if detail else ""
                raise ApiJudgeError(_redact(message, key)) from None
            wait = self.backoff * 2**attempt if retry_after is None else retry_after
            wait = min(max(wait, 0.0), self.max_backoff)
            attempt += 1
            logger.warning(
                "%s: %s; retry %d/%d in %.1f s", self.url, problem, attempt, self.max_retries, wait
            )
            self._sleep(wait)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would resend the Authorization header to the new location."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises the 3xx as an HTTPError


def logprobs_to_distribution(top_logprobs: dict[str, float]) -> dict[int, float]:
    """Probabilities of the tokens that are whole numbers 0..100 (all 101 keys; see module doc)."""
    dist = {n: 0.0 for n in NUMBERS}
    for token, logprob in top_logprobs.items():
        match = _NUMBER_TOKEN.fullmatch(token)
        if match is None:
            continue
        n = int(match.group(1))
        if n in dist:
            dist[n] += math.exp(logprob)
    return dist


def _read_body(exc: urllib.error.HTTPError, limit: int = 500) -> str:
    try:
        text = exc.read().decode("utf-8", errors="replace")
    except (OSError, ValueError):  # the body is only for the message
        return ""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _redact(text: str, key: str | None) -> str:
    return text.replace(key, "[REDACTED]") if key else text


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)
