"""All call-level retry policy: exponential backoff with jitter, Retry-After, and one predicate
(`answers.retry_call`) that says which calls are safe to repeat.

Reads are repeated on 408/409/429/5xx and transport errors. A submit is repeated only when fal
certainly did not accept it (see `retry_call`). When the retries are used up, the last failure
is raised as one of our RemoteErrors carrying its `Reply`, and the outcome module decides what
that means for the job: a failed read is never the job's answer.
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from ..errors import (
    AccountLockedError,
    AmbiguousSubmitError,
    AuthError,
    InputRejectedError,
    RateLimitedError,
    RemoteError,
    TransientRemoteError,
)
from ..logs import get_logger
from .answers import Phase, Reply, is_answer, is_ingress_error, reply_of, reply_of_exception, retry_call

log = get_logger("api")

__all__ = ["RetryPolicy", "Transport", "error_for", "is_ingress_error"]

MESSAGE_CHARS = 200  # a message never quotes more of a remote body than this
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff: base·2^n capped, ±50 % jitter, at least Retry-After."""

    attempts: int = 6
    base_s: float = 0.5
    cap_s: float = 30.0
    max_retry_after_s: float = 120.0

    def delay(
        self, attempt: int, retry_after_s: float | None = None, rng: Callable[[], float] = random.random
    ) -> float:
        backoff = min(self.cap_s, self.base_s * 2.0 ** (attempt - 1)) * (0.5 + rng())
        if retry_after_s is not None:
            return max(backoff, min(retry_after_s, self.max_retry_after_s))
        return backoff


_TITLE = re.compile(r"<title>\s*([^<]{1,120})</title>", re.IGNORECASE)


def _detail(resp: httpx.Response) -> tuple[str, Any]:
    """One clean line for a response's error, and its JSON body (None when it has none).
    An HTML page (an nginx error) becomes its title, never the page."""
    try:
        body = resp.json()
    except ValueError:
        text = resp.text.strip()
        title = _TITLE.search(text)
        if title:
            return f"{title.group(1).strip()} (from fal's gateway)", None
        if text.startswith("<"):
            return "an HTML error page", None
        first = text.splitlines()[0] if text else ""
        return (first[:MESSAGE_CHARS] or f"HTTP {resp.status_code}"), None
    detail = body.get("detail") if isinstance(body, dict) else None
    platform = body.get("error") if isinstance(body, dict) else None
    if detail is None and isinstance(platform, dict) and platform.get("message"):
        # the platform APIs' "Standard error response format": {"error": {"type", "message"}}
        # (https://docs.fal.ai/platform-apis/v1/models/usage, responses 400-429)
        return f"{platform.get('type') or 'error'}: {platform['message']}"[:MESSAGE_CHARS], body
    if isinstance(detail, list) and detail:
        first = detail[0]
        loc = ".".join(str(x) for x in first.get("loc", [])[1:]) if isinstance(first, dict) else ""
        msg = f"{loc}: {first.get('msg')}" if isinstance(first, dict) else str(first)
        if len(detail) > 1:
            msg += f" (and {len(detail) - 1} more)"
    else:
        msg = str(detail or body)
    return msg[:MESSAGE_CHARS], body


def error_for(resp: httpx.Response, what: str, reply: Reply | None = None) -> RemoteError:
    """Translate an error response into our error tree (at the boundary, once)."""
    reply = reply or reply_of(resp)
    msg, body = _detail(resp)
    code = resp.status_code
    text = f"{what}: HTTP {code}: {msg}"
    kw: dict[str, Any] = {"status": code, "error_type": reply.error_type, "body": body, "reply": reply}
    if code == 401:
        return AuthError(text, hint="check FAL_KEY", **kw)
    if code == 403 and "locked" in msg.lower():
        return AccountLockedError(text, hint="top up at fal.ai/dashboard/billing, then run again", **kw)
    if code == 403:
        return AuthError(text, hint="check FAL_KEY and its permissions", **kw)
    if code == 429:
        return RateLimitedError(text, retry_after_s=reply.retry_after_s, **kw)
    if code == 422:
        return InputRejectedError(text, hint="fix the manifest", **kw)
    if code in (408, 409) or code >= 500:
        return TransientRemoteError(text, **kw)
    return RemoteError(text, **kw)


def _no_answer(what: str, reply: Reply, exc: httpx.RequestError, phase: Phase) -> RemoteError:
    if phase == Phase.SUBMIT and reply.failure is not None and reply.failure.value != "connect":
        return AmbiguousSubmitError(
            f"{what}: {reply.describe} after the request was sent; it may have been accepted",
            hint="`batch-runner resolve` asks fal what became of it",
            reply=reply,
        )
    return TransientRemoteError(f"{what}: {reply.describe} ({type(exc).__name__})", reply=reply)


class Transport:
    """Sends requests with the retry policy; `stop` makes any wait end early."""

    def __init__(self, client: httpx.Client, policy: RetryPolicy, stop: threading.Event) -> None:
        self.client, self.policy, self.stop = client, policy, stop
        self.requests_sent = 0  # for benchmarks: HTTP requests per job
        self._count_lock = threading.Lock()

    def count_request(self) -> None:
        with self._count_lock:
            self.requests_sent += 1

    def backoff(self, attempt: int, retry_after: float | None) -> None:
        self.stop.wait(self.policy.delay(attempt, retry_after))

    def read(self, method: str, url: str, what: str, *, phase: Phase = Phase.PLATFORM, **kw: Any) -> httpx.Response:
        """A call in `phase`, repeated while `retry_call` allows. Returns the first response
        that is an answer (2xx; a replayed model error on a result; a cancel's status)."""
        return self._send(method, url, what, phase, **kw)

    def submit(self, url: str, what: str, **kw: Any) -> httpx.Response:
        """POST a submit: repeated only when fal certainly did not accept it."""
        return self._send("POST", url, what, Phase.SUBMIT, **kw)

    def _send(self, method: str, url: str, what: str, phase: Phase, **kw: Any) -> httpx.Response:
        def once() -> httpx.Response:
            self.count_request()
            try:
                resp = self.client.request(method, url, **kw)
            except httpx.RequestError as exc:
                raise _no_answer(what, reply_of_exception(exc), exc, phase) from None
            reply = reply_of(resp)
            if is_answer(phase, reply):
                return resp
            raise error_for(resp, what, reply)

        return self.repeat(phase, what, once)

    def repeat(self, phase: Phase, what: str, once: Callable[[], T]) -> T:
        """The one retry loop: run `once` (one call, raising a RemoteError that carries its Reply)
        again while `retry_call` allows and the policy's attempts last."""
        for attempt in range(1, self.policy.attempts + 1):
            try:
                return once()
            except RemoteError as exc:
                err, reply = exc, exc.reply if isinstance(exc.reply, Reply) else Reply()
            if not retry_call(phase, reply):
                if phase == Phase.SUBMIT and reply.status is not None and reply.status >= 500:
                    raise AmbiguousSubmitError(
                        f"{err.message}; the request may have been accepted",
                        hint="`batch-runner resolve` asks fal what became of it",
                        status=err.status,
                        error_type=err.error_type,
                        reply=reply,
                    )
                raise err
            if attempt == self.policy.attempts or self.stop.is_set():
                if not isinstance(err, TransientRemoteError):  # retryable, and the retries are used up
                    err = TransientRemoteError(err.message, status=err.status, error_type=err.error_type, reply=reply)
                raise err
            log.info("%s failed (%s); retry %d/%d", what, err.message, attempt, self.policy.attempts - 1)
            self.backoff(attempt, reply.retry_after_s)
        raise AssertionError("unreachable")
