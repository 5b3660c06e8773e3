"""All retry policy: exponential backoff with jitter, Retry-After, and what is safe to repeat.

Reads (status, result, downloads, cancel) are repeated on 408/409/429/5xx and transport errors.
A submit is repeated only when fal certainly did not accept it: 429, an nginx ingress error
(502/503/504 without x-fal-request-id), a 504 that names its error type, or a connection that
never opened. A timeout or reset after the submit went out is ambiguous and is never repeated:
it raises AmbiguousSubmitError and the job goes to `uncertain`.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import Any, Callable

import httpx

from ..errors import (
    AccountLockedError, AmbiguousSubmitError, AuthError, InputRejectedError, RateLimitedError, RemoteError,
    TransientRemoteError,
)
from ..logs import get_logger

log = get_logger("api")

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff: base·2^n capped, ±50 % jitter, at least Retry-After."""

    attempts: int = 6
    base_s: float = 0.5
    cap_s: float = 30.0
    max_retry_after_s: float = 120.0

    def delay(self, attempt: int, retry_after_s: float | None = None, rng: Callable[[], float] = random.random) -> float:
        backoff = min(self.cap_s, self.base_s * 2 ** (attempt - 1)) * (0.5 + rng())
        if retry_after_s is not None:
            return max(backoff, min(retry_after_s, self.max_retry_after_s))
        return backoff


def _retry_after(resp: httpx.Response) -> float | None:
    raw = resp.headers.get("retry-after")
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def is_ingress_error(resp: httpx.Response) -> bool:
    """A 502/503/504 from fal's nginx, before any app saw the request (as fal-client defines it)."""
    return (resp.status_code in (502, 503, 504) and "x-fal-request-id" not in resp.headers
            and "nginx" in resp.text.lower())


def _detail(resp: httpx.Response) -> tuple[str, str | None, Any]:
    try:
        body = resp.json()
    except ValueError:
        text = resp.text.strip().splitlines()
        return (text[0][:200] if text else f"HTTP {resp.status_code}"), resp.headers.get("x-fal-error-type"), None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list) and detail:
        first = detail[0]
        loc = ".".join(str(x) for x in first.get("loc", [])[1:]) if isinstance(first, dict) else ""
        msg = f"{loc}: {first.get('msg')}" if isinstance(first, dict) else str(first)
        if len(detail) > 1:
            msg += f" (and {len(detail) - 1} more)"
    else:
        msg = str(detail or body)[:300]
    error_type = (body.get("error_type") if isinstance(body, dict) else None) or resp.headers.get("x-fal-error-type")
    return msg, error_type, body


def error_for(resp: httpx.Response, what: str) -> RemoteError:
    """Translate an error response into our error tree (at the boundary, once)."""
    msg, error_type, body = _detail(resp)
    code = resp.status_code
    text = f"{what}: HTTP {code}: {msg}"
    kw = {"status": code, "error_type": error_type, "body": body}
    if code == 401:
        return AuthError(text, hint="check FAL_KEY", **kw)
    if code == 403 and "locked" in msg.lower():
        return AccountLockedError(text, hint="top up at fal.ai/dashboard/billing, then run again", **kw)
    if code == 403:
        return AuthError(text, hint="check FAL_KEY and its permissions", **kw)
    if code == 429:
        return RateLimitedError(text, retry_after_s=_retry_after(resp), **kw)
    if code == 422:
        return InputRejectedError(text, hint="fix the manifest", **kw)
    if code in RETRY_STATUSES:
        return TransientRemoteError(text, **kw)
    return RemoteError(text, **kw)


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

    def read(self, method: str, url: str, what: str, *, ok: Callable[[httpx.Response], bool] | None = None,
             **kw: Any) -> httpx.Response:
        """A request that is safe to repeat. Returns the first response `ok` accepts (2xx by default)."""
        accept = ok or (lambda r: r.is_success)
        for attempt in range(1, self.policy.attempts + 1):
            try:
                self.count_request()
                resp = self.client.request(method, url, **kw)
            except httpx.TransportError as exc:
                err: RemoteError = TransientRemoteError(f"{what}: {type(exc).__name__}: {exc}")
            else:
                if accept(resp):
                    return resp
                err = error_for(resp, what)
                if resp.status_code not in RETRY_STATUSES:
                    raise err
            if attempt == self.policy.attempts or self.stop.is_set():
                raise err
            log.info("%s failed (%s); retry %d/%d", what, err.message, attempt, self.policy.attempts - 1)
            self.backoff(attempt, getattr(err, "retry_after_s", None))
        raise AssertionError("unreachable")

    def submit(self, url: str, what: str, **kw: Any) -> httpx.Response:
        """POST a submit: repeated only when fal certainly did not accept it."""
        for attempt in range(1, self.policy.attempts + 1):
            try:
                self.count_request()
                resp = self.client.post(url, **kw)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # never reached the server
                err: RemoteError = TransientRemoteError(f"{what}: {type(exc).__name__}: {exc}")
            except httpx.TransportError as exc:  # sent, and the answer was lost
                raise AmbiguousSubmitError(
                    f"{what}: {type(exc).__name__} after the request was sent; it may have been accepted",
                    hint="not resubmitted automatically; `batch-runner retry --state uncertain` resubmits") from exc
            else:
                if resp.is_success:
                    return resp
                err = error_for(resp, what)
                not_accepted = (resp.status_code == 429 or is_ingress_error(resp)
                                or (resp.status_code == 504 and err.error_type is not None))
                if not not_accepted:
                    raise err
                if not isinstance(err, TransientRemoteError):
                    err = TransientRemoteError(err.message, status=err.status, error_type=err.error_type)
            if attempt == self.policy.attempts or self.stop.is_set():
                raise err
            log.info("%s not accepted (%s); retry %d/%d", what, err.message, attempt, self.policy.attempts - 1)
            self.backoff(attempt, getattr(err, "retry_after_s", None))
        raise AssertionError("unreachable")
