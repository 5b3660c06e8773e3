"""fal's vocabulary as types: queue statuses, the reply to one HTTP call, fal's error types, and
which calls may be repeated. Sources are named beside each fact (the reference is
shared/reference/fal-queue-protocol.md, "§n" below; fal-client is projects/fal_client in fal-ai/fal).
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx

from ..errors import RemoteError


class Phase(str, enum.Enum):
    """Which of fal's calls a reply answers."""

    UPLOAD = "upload"  # storage token, file upload: nothing billable has been sent yet
    SUBMIT = "submit"  # POST to the queue: may create a billable request
    STATUS = "status"  # status poll or status stream of a request
    RESULT = "result"  # the result of a completed request (replays the model's answer, §5)
    DOWNLOAD = "download"  # the output file on fal's CDN
    CANCEL = "cancel"  # PUT …/cancel
    PLATFORM = "platform"  # api.fal.ai/v1: pricing, usage, request listing, billing events


#: Phases whose calls read or do nothing billable, so repeating them is always safe.
READS = frozenset({Phase.UPLOAD, Phase.STATUS, Phase.RESULT, Phase.DOWNLOAD, Phase.CANCEL, Phase.PLATFORM})


class Failure(str, enum.Enum):
    """A call that got no HTTP answer."""

    CONNECT = "connect"  # the connection never opened: nothing was sent
    RESET = "reset"  # sent, then the connection dropped before the answer
    TIMEOUT = "timeout"  # sent, and no answer came in time


@dataclass(frozen=True)
class Reply:
    """What one HTTP call came back with: a status code, or a failure with no answer at all."""

    status: int | None = None
    failure: Failure | None = None
    # x-fal-request-id: fal's app (not an ingress proxy) answered; fal-client: "this is clearly
    # returned from our server" (fal-client client.py, _maybe_retry_request)
    request_id: str | None = None
    ingress: bool = False  # an nginx error page from fal's edge (502/503/504, no request id): no app saw it
    error_type: str | None = None  # body `error_type`, else header X-Fal-Error-Type (§7)
    user_timeout: bool = False  # X-Fal-Request-Timeout-Type: user: the start deadline passed, never run (§7)
    retry_after_s: float | None = None
    billable_units: Decimal | None = None  # x-fal-billable-units, when fal sends it (§5; see the README)
    keyless: bool = False  # the call carried no key of ours (a signed upload URL): a 401/403 is not about the key

    @property
    def describe(self) -> str:
        if self.failure is not None:
            return {Failure.CONNECT: "no connection", Failure.RESET: "connection reset", Failure.TIMEOUT: "timed out"}[
                self.failure
            ]
        return f"HTTP {self.status}"


def reply_of(resp: httpx.Response) -> Reply:
    """The Reply for an HTTP response (the body is read only for its error type)."""
    units = resp.headers.get("x-fal-billable-units")
    try:
        billable = Decimal(units) if units else None
    except ArithmeticError:
        billable = None
    error_type = resp.headers.get("x-fal-error-type")
    if not resp.is_success and "json" in resp.headers.get("content-type", ""):
        try:
            body = resp.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error_type"), str):
            error_type = body["error_type"]
    return Reply(
        status=resp.status_code,
        request_id=resp.headers.get("x-fal-request-id"),
        ingress=is_ingress_error(resp),
        error_type=error_type,
        user_timeout=resp.headers.get("x-fal-request-timeout-type", "").lower() == "user",
        retry_after_s=_retry_after(resp),
        billable_units=billable,
    )


def reply_of_exception(exc: httpx.RequestError) -> Reply:
    """The Reply for a call that got no answer: was anything sent? A pool timeout sent nothing:
    it is raised while waiting for a connection from the pool ("PoolTimeout: Timed out waiting to
    acquire a connection from the pool", httpx's exceptions docs). A body that cannot be decoded
    and too many redirects come after the request was sent, as a dropped connection does."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        return Reply(failure=Failure.CONNECT)
    if isinstance(exc, httpx.TimeoutException):
        return Reply(failure=Failure.TIMEOUT)
    return Reply(failure=Failure.RESET)


def is_ingress_error(resp: httpx.Response) -> bool:
    """A 502/503/504 from fal's nginx before any app saw the request: fal-client's definition
    (client.py `_is_ingress_error`: no x-fal-request-id and "nginx" in the body)."""
    if resp.status_code not in (502, 503, 504) or "x-fal-request-id" in resp.headers:
        return False
    try:
        return "nginx" in resp.text.lower()
    except (httpx.ResponseNotRead, UnicodeDecodeError):
        return False


def _retry_after(resp: httpx.Response) -> float | None:
    raw = resp.headers.get("retry-after")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None


#: Codes a client repeats on any read: fal-client retries 408, 409, 429 and ingress errors
#: (client.py RETRY_CODES); fal-js also retries 500/502/503/504 on status (queue.ts, retry.ts).
READ_RETRY_CODES = frozenset({408, 409, 429, 500, 502, 503, 504})
#: Codes that are a failure of our call, never a replayed model answer, even on a result.
CALL_FAILURE_CODES = frozenset({401, 403, 408, 409, 429})


def retry_call(phase: Phase, reply: Reply) -> bool:
    """May this exact call be sent again? The one predicate every fal call goes through.

    Reads are repeated after any failure that is not an answer. A submit is repeated only with
    proof that fal did not accept it: no connection, 429 (rate limit), 408 (the server did not
    receive the whole request; fal-client repeats it), an ingress page from fal's nginx, or a
    504 start timeout with no request id ("not billed", §7). Anything else after a submit went
    out may have created a billable request, so it is never repeated: the job goes `uncertain`.
    """
    if reply.failure is not None:
        return reply.failure == Failure.CONNECT or phase in READS
    code = reply.status or 0
    if phase == Phase.SUBMIT:
        return (
            code in (408, 429)
            or reply.ingress
            or (code == 504 and reply.request_id is None and (reply.user_timeout or reply.error_type is not None))
        )
    if phase == Phase.RESULT and reply.request_id is not None and code not in CALL_FAILURE_CODES:
        return False  # the request's own answer, replayed (§5): not a failure of the call
    return code in READ_RETRY_CODES


def is_answer(phase: Phase, reply: Reply) -> bool:
    """A reply that carries fal's answer for the request (as opposed to a failed call)."""
    code = reply.status or 0
    if reply.failure is not None:
        return False
    if 200 <= code < 300:
        return True
    if phase == Phase.RESULT:  # a failed run's result replays the model's status and body (§5)
        return reply.request_id is not None and code not in CALL_FAILURE_CODES
    if phase == Phase.CANCEL:  # the body says OK / CANCELLATION_REQUESTED / ALREADY_COMPLETED / NOT_FOUND (§6)
        return code in (400, 404)
    return False


# ---------------------------------------------------------------------- fal's error types

#: Infrastructure failures: never billed ("5xx never charged", §11), and a new attempt may succeed.
#: Source: fal docs, model-apis/request-errors (§7), plus the fal-client/emulator server errors.
RETRYABLE_ERROR_TYPES = frozenset(
    {
        "runner_disconnected",
        "runner_connection_timeout",
        "runner_connection_refused",
        "runner_connection_error",
        "runner_scheduling_failure",
        "runner_incomplete_response",
        "runner_server_error",
        "request_timeout",
        "startup_timeout",
        "internal_error",
        "internal_server_error",
        "server_error",
    }
)
#: The input was refused: fix the manifest. Pydantic-style validation types in `detail` (§7),
#: and fal's file_download_error when a media URL could not be fetched.
REJECTION_ERROR_TYPES = frozenset(
    {"validation_error", "value_error", "missing", "enum", "file_download_error", "string_too_long", "bad_request"}
)
#: The request was cancelled: fal documents `client_cancelled` (499) on the request-errors page;
#: `request_cancelled` is what older emulator versions sent, kept so their records still read right.
CANCELLED_ERROR_TYPES = frozenset({"client_cancelled", "request_cancelled"})


def input_sha256(payload: Any) -> str:
    """The identity of a submitted input: sha256 of its canonical JSON. fal's request listing
    returns each request's `json_input`; the same hash over it finds a submit whose answer was lost."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------- statuses


@dataclass(frozen=True)
class Queued:
    position: int | None


@dataclass(frozen=True)
class InProgress:
    logs: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Completed:
    """fal has no FAILED status: a failed run completes with `error` and `error_type` (§3)."""

    logs: tuple[dict[str, Any], ...]
    error: str | None
    error_type: str | None


Status = Queued | InProgress | Completed


def parse_status(data: Any) -> Status:
    """One parser for every status answer, polled or streamed (fal-client `_parse_status`)."""
    if not isinstance(data, dict):
        raise RemoteError("status: the answer is not a JSON object")
    state = data.get("status")
    logs = tuple(x for x in (data.get("logs") or ()) if isinstance(x, dict))
    if state == "IN_QUEUE":
        pos = data.get("queue_position")
        return Queued(pos if isinstance(pos, int) else None)
    if state == "IN_PROGRESS":
        return InProgress(logs)
    if state == "COMPLETED":
        error = data.get("error")
        return Completed(
            logs,
            str(error)[:500] if error is not None else None,
            str(data["error_type"]) if data.get("error_type") else None,
        )
    raise RemoteError(f"status: unknown status {str(state)[:40]!r}")


@dataclass(frozen=True)
class Result:
    """The answer of the result call: the output, or the model's replayed error."""

    reply: Reply
    body: Any

    @property
    def ok(self) -> bool:
        return self.reply.status == 200

    @property
    def billable_units(self) -> Decimal | None:
        return self.reply.billable_units

    @property
    def video_url(self) -> str | None:
        video = self.body.get("video") if isinstance(self.body, dict) else None
        url = video.get("url") if isinstance(video, dict) else None
        return url if isinstance(url, str) and url else None

    @property
    def detail(self) -> str | None:
        """The first message of the body's `detail` (a string or a list of {loc, msg}, §7)."""
        d = self.body.get("detail") if isinstance(self.body, dict) else None
        if isinstance(d, list) and d and isinstance(d[0], dict):
            return str(d[0].get("msg"))[:300]
        return str(d)[:300] if d else None

    @property
    def error_type(self) -> str | None:
        if isinstance(self.body, dict) and isinstance(self.body.get("error_type"), str):
            return str(self.body["error_type"])
        if isinstance(self.body, dict) and isinstance(self.body.get("detail"), list) and self.body["detail"]:
            first = self.body["detail"][0]
            if isinstance(first, dict) and isinstance(first.get("type"), str):
                return str(first["type"])
        return self.reply.error_type
