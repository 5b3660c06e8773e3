"""FalClient's rules end to end with no server: httpx.MockTransport stands in for the wire and
answers each call from a script. Only the HTTP transport is replaced; the client, its retry loop
and its parsers run as in production. The retry loop's waits go to the `stop` event, which here
records them instead of sleeping, so no test waits.

Protocol facts are cited as the code cites them: "§n" is shared/reference/fal-queue-protocol.md,
fal-client is projects/fal_client in fal-ai/fal, fal-js is fal-ai/fal-js.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from batch_runner.api.answers import Completed, InProgress, Queued
from batch_runner.api.client import FalClient
from batch_runner.api.transport import RetryPolicy
from batch_runner.config import FalHosts, Secret
from batch_runner.errors import (
    AccountLockedError,
    AmbiguousSubmitError,
    AuthError,
    InputRejectedError,
    RateLimitedError,
    RemoteError,
    TransientRemoteError,
)

SECRET = "key-id-4f2a:secret-9c1e7b"  # made up; must never leave in anything but the Authorization header
# Four distinct hosts, so a test can tell which host a request went to.
HOSTS = FalHosts(
    queue="https://queue.fal.test",
    rest="https://rest.fal.test",
    cdn="https://cdn.fal.test",
    api="https://api.fal.test/v1",
)
ATTEMPTS = 4
# No backoff of its own: a wait is recorded only when Retry-After asks for one.
POLICY = RetryPolicy(attempts=ATTEMPTS, base_s=0.0, cap_s=0.0, max_retry_after_s=60.0)

ENDPOINT = "luma/agent/ray/v3.2/reframe"
REQUEST = f"{HOSTS.queue}/luma/agent/requests/r-1"  # status/result/cancel use owner/alias only (§1)
STATUS_URL, CANCEL_URL = f"{REQUEST}/status", f"{REQUEST}/cancel"
OUTPUT_URL = "https://v3b.fal.media/files/monkey/out.mp4"  # outputs are on fal's CDN hosts (§1)

Script = Callable[[httpx.Request], httpx.Response]


def answer(
    status: int = 200, body: Any = None, *, text: str | None = None, headers: dict[str, str] | None = None
) -> Script:
    """A scripted HTTP answer (a new Response for every request that gets it)."""

    def make(request: httpx.Request) -> httpx.Response:
        if text is not None:
            return httpx.Response(status, text=text, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return make


def broken(exc_type: type[httpx.RequestError]) -> Script:
    """A call that gets no HTTP answer at all."""

    def make(request: httpx.Request) -> httpx.Response:
        raise exc_type("scripted transport failure", request=request)

    return make


NGINX_502 = answer(502, text="<html><head><title>502 Bad Gateway</title></head><center>nginx</center></html>")
SUBMITTED = {
    "status": "IN_QUEUE",
    "request_id": "r-1",
    "response_url": REQUEST,
    "status_url": STATUS_URL,
    "cancel_url": CANCEL_URL,
    "queue_position": 2,
}
IN_QUEUE = answer(202, {"status": "IN_QUEUE", "request_id": "r-1", "queue_position": 0})


class Clock(threading.Event):
    """The client's stop event, which is also its retry loop's clock: each backoff is recorded
    and returns at once, as a stop event that is not set would after the wait."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        return self.is_set()


@dataclass
class Fal:
    """A FalClient whose wire answers from `script`, one entry per request, the last one repeated."""

    script: list[Script]
    requests: list[httpx.Request] = field(default_factory=list)
    stop: Clock = field(default_factory=Clock)

    def __post_init__(self) -> None:
        self.client = FalClient(
            HOSTS, Secret(SECRET), policy=POLICY, stop=self.stop, transport=httpx.MockTransport(self._handle)
        )

    def _handle(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        step = self.script[min(len(self.requests), len(self.script)) - 1]
        return step(request)


@pytest.fixture
def fal() -> Iterator[Callable[..., Fal]]:
    made: list[Fal] = []

    def make(*script: Script) -> Fal:
        made.append(Fal(list(script)))
        return made[-1]

    yield make
    for f in made:
        f.client.close()


def _ask(client: FalClient, call: str) -> object:
    """One of the client's queue calls, on request r-1."""
    if call == "submit":
        return client.submit(ENDPOINT, {"prompt": "p"})
    return getattr(client, call)({"status": STATUS_URL, "result": REQUEST, "cancel": CANCEL_URL}[call])


# ---------------------------------------------------------------------- submit


def test_submit_posts_the_input_with_the_key_and_reads_the_request_urls(fal):
    f = fal(answer(200, SUBMITTED))
    sub = f.client.submit(ENDPOINT, {"prompt": "a monkey"})
    (req,) = f.requests
    # submit: POST {queue}/{endpoint_id}, JSON body = model input (§2); Authorization: Key <FAL_KEY> (§8)
    assert req.method == "POST" and str(req.url) == f"{HOSTS.queue}/{ENDPOINT}"
    assert json.loads(req.content) == {"prompt": "a monkey"}
    assert req.headers["authorization"] == f"Key {SECRET}"
    assert (sub.request_id, sub.status_url, sub.response_url, sub.cancel_url, sub.queue_position) == (
        "r-1",
        STATUS_URL,
        REQUEST,
        CANCEL_URL,
        2,
    )


@pytest.mark.parametrize(
    "lost",
    # DecodingError (a body that cannot be decoded) and TooManyRedirects are not TransportErrors
    # in httpx's tree, but they too come after the request went out
    [
        httpx.ReadTimeout,
        httpx.WriteTimeout,
        httpx.RemoteProtocolError,
        httpx.ReadError,
        httpx.DecodingError,
        httpx.TooManyRedirects,
    ],
    ids=lambda e: e.__name__,
)
def test_a_submit_whose_answer_is_lost_after_sending_is_never_repeated(fal, lost):
    # No idempotency key exists: a repeated POST can create a duplicate paid job (§2, §8
    # "a submit POST that times out on read is re-sent → possible duplicate billed job").
    f = fal(broken(lost), answer(200, SUBMITTED))
    with pytest.raises(AmbiguousSubmitError, match="may have been accepted"):
        f.client.submit(ENDPOINT, {"prompt": "p"})
    assert len(f.requests) == 1 and f.stop.waits == []


@pytest.mark.parametrize(
    "failure",
    [
        answer(500, {"detail": "Internal Server Error"}),
        answer(503, {"detail": "runner busy"}, headers={"x-fal-request-id": "r-9"}),
        # an nginx page, but with x-fal-request-id: fal's app saw it (fal-client `_is_ingress_error`)
        answer(502, text="<center>nginx</center>", headers={"x-fal-request-id": "r-9"}),
        answer(504, {"detail": "Gateway Timeout"}),  # no error type, no user timeout: nothing says "not taken"
    ],
    ids=["500", "503-with-request-id", "nginx-502-with-request-id", "504-bare"],
)
def test_a_submit_answered_with_a_server_error_is_ambiguous_and_not_repeated(fal, failure):
    f = fal(failure, answer(200, SUBMITTED))
    with pytest.raises(AmbiguousSubmitError) as info:
        f.client.submit(ENDPOINT, {"prompt": "p"})
    assert len(f.requests) == 1 and f.stop.waits == []
    assert info.value.status in (500, 502, 503, 504) and "may have been accepted" in info.value.message


@pytest.mark.parametrize(
    "not_taken",
    [
        broken(httpx.ConnectError),  # the connection never opened: nothing was sent
        broken(httpx.ConnectTimeout),
        broken(httpx.PoolTimeout),  # no connection came free from the pool: nothing was sent (httpx docs)
        answer(429, {"detail": "Rate limit exceeded"}),  # fal-client RETRY_CODES (§8)
        answer(408, {"detail": "Request Timeout"}),  # fal-client RETRY_CODES (§8)
        NGINX_502,  # ingress error: no x-fal-request-id and "nginx" in the body (§8)
        # a start timeout the caller set: "never run", "not billed" (§7; answers.retry_call)
        answer(504, {"detail": "timed out"}, headers={"X-Fal-Request-Timeout-Type": "user"}),
        answer(504, {"detail": "Request timed out", "error_type": "startup_timeout"}),  # §7 infrastructure error
    ],
    ids=[
        "connect-error",
        "connect-timeout",
        "pool-timeout",
        "429",
        "408",
        "nginx-502",
        "504-user-timeout",
        "504-startup-timeout",
    ],
)
def test_a_submit_fal_certainly_did_not_take_is_sent_again(fal, not_taken):
    f = fal(not_taken, answer(200, SUBMITTED))
    assert f.client.submit(ENDPOINT, {"prompt": "p"}).request_id == "r-1"
    assert len(f.requests) == 2 and f.requests[0].content == f.requests[1].content


@pytest.mark.parametrize(
    ("refusal", "error"),
    [
        (
            answer(422, {"detail": [{"loc": ["body", "prompt"], "msg": "field required", "type": "missing"}]}),
            InputRejectedError,
        ),
        (answer(401, {"detail": "Invalid key"}), AuthError),
        (answer(403, {"detail": "Forbidden"}), AuthError),
        # §7: "User is locked. Reason: Exhausted balance. …"
        (answer(403, {"detail": "User is locked. Reason: Exhausted balance."}), AccountLockedError),
    ],
    ids=["422", "401", "403", "403-locked"],
)
def test_a_refused_submit_surfaces_its_error_and_is_not_repeated(fal, refusal, error):
    f = fal(refusal, answer(200, SUBMITTED))
    with pytest.raises(error):
        f.client.submit(ENDPOINT, {"prompt": "p"})
    assert len(f.requests) == 1


@pytest.mark.parametrize(
    "answered",
    [answer(200, {"status": "IN_QUEUE"}), answer(200, text="queued"), answer(200, ["r-1"])],
    ids=["no-request-id", "not-json", "not-an-object"],
)
def test_a_2xx_submit_answer_without_a_request_id_is_ambiguous(fal, answered):
    # fal answered 2xx, so it may have queued the request; fal-client hard-requires request_id (§2)
    f = fal(answered, answer(200, SUBMITTED))
    with pytest.raises(AmbiguousSubmitError, match="lacks a request id"):
        f.client.submit(ENDPOINT, {"prompt": "p"})
    assert len(f.requests) == 1


def test_a_rate_limited_submit_waits_as_told_and_gives_up_after_the_attempts(fal):
    f = fal(answer(429, {"detail": "slow down"}, headers={"Retry-After": "7"}))
    with pytest.raises(RateLimitedError) as info:
        f.client.submit(ENDPOINT, {"prompt": "p"})
    assert isinstance(info.value, TransientRemoteError) and info.value.retry_after_s == 7.0
    assert len(f.requests) == ATTEMPTS and f.stop.waits == [7.0] * (ATTEMPTS - 1)


# ---------------------------------------------------------------------- status, result, cancel


@pytest.mark.parametrize(
    "failure",
    [
        answer(429, {"detail": "slow down"}),
        answer(408, {"detail": "timeout"}),
        answer(409, {"detail": "conflict"}),
        answer(500, {"detail": "boom"}),
        NGINX_502,
        answer(503, {"detail": "busy"}, headers={"x-fal-request-id": "r-1"}),
        answer(504, {"detail": "timeout"}),
        broken(httpx.ConnectError),
        broken(httpx.ReadTimeout),  # a read's lost answer is harmless to ask for again
        broken(httpx.RemoteProtocolError),
        broken(httpx.DecodingError),  # a body that cannot be decoded: asked again, never raised raw
    ],
    ids=["429", "408", "409", "500", "nginx-502", "503", "504", "connect", "read-timeout", "protocol", "decoding"],
)
def test_a_status_poll_is_repeated_after_a_failed_call(fal, failure):
    # fal-client retries 408/409/429/ingress and transport errors; fal-js also 500/502/503/504 on
    # status (§8; answers.READ_RETRY_CODES)
    f = fal(failure, IN_QUEUE)
    assert f.client.status(STATUS_URL) == Queued(0)
    assert len(f.requests) == 2


def test_retry_after_sets_the_wait_before_the_next_read(fal):
    f = fal(answer(429, {}, headers={"Retry-After": "7"}), answer(503, {}), IN_QUEUE)
    f.client.status(STATUS_URL)
    assert f.stop.waits == [7.0, 0.0]  # the second failure had no Retry-After: the policy's own (zero) backoff


def test_a_read_failing_every_time_gives_up_after_the_policys_attempts(fal):
    f = fal(answer(503, {"detail": "busy"}))
    with pytest.raises(TransientRemoteError) as info:
        f.client.status(STATUS_URL)
    assert info.value.status == 503 and len(f.requests) == ATTEMPTS


def test_a_stop_ends_the_retries_at_once(fal):
    f = fal(answer(503, {"detail": "busy"}), IN_QUEUE)
    f.stop.set()
    with pytest.raises(TransientRemoteError):
        f.client.status(STATUS_URL)
    assert len(f.requests) == 1


@pytest.mark.parametrize("call", ["status", "result", "cancel"])
@pytest.mark.parametrize(
    ("refusal", "error"),
    [
        (answer(401, {"detail": "Invalid key"}, headers={"x-fal-request-id": "r-1"}), AuthError),
        (answer(403, {"detail": "Forbidden"}, headers={"x-fal-request-id": "r-1"}), AuthError),
        (answer(403, {"detail": "User is locked. Reason: TOP_UP."}), AccountLockedError),
    ],
    ids=["401", "403", "403-locked"],
)
def test_a_refused_read_is_the_auth_error_never_an_answer(fal, call, refusal, error):
    # even carrying x-fal-request-id, a 401/403 is our call's failure, not a replayed model
    # answer (answers.CALL_FAILURE_CODES), on a result and a cancel too
    f = fal(refusal, answer(200, {"status": "OK"}))
    with pytest.raises(error):
        _ask(f.client, call)
    assert len(f.requests) == 1


@pytest.mark.parametrize(
    ("code", "body", "expected"),
    [
        # IN_QUEUE carries queue_position; IN_PROGRESS and COMPLETED carry logs (§3)
        (202, {"status": "IN_QUEUE", "queue_position": 3}, Queued(3)),
        (202, {"status": "IN_QUEUE"}, Queued(None)),
        (
            202,
            {"status": "IN_PROGRESS", "logs": [{"message": "step 1"}, "noise"]},
            InProgress(({"message": "step 1"},)),
        ),
        (200, {"status": "COMPLETED", "logs": None}, Completed((), None, None)),
        # no FAILED state: a failed run is COMPLETED with error and error_type (§3)
        (
            200,
            {"status": "COMPLETED", "logs": [], "error": "Runner disconnected", "error_type": "runner_disconnected"},
            Completed((), "Runner disconnected", "runner_disconnected"),
        ),
    ],
    ids=["queued", "queued-no-position", "in-progress", "completed", "completed-with-error"],
)
def test_status_answers_are_parsed_into_fals_three_states(fal, code, body, expected):
    f = fal(answer(code, body))
    assert f.client.status(STATUS_URL, logs=True) == expected
    (req,) = f.requests
    # GET {base}/requests/{id}/status?logs=1 (§3; fal-js sends logs=1|0)
    assert req.method == "GET" and req.url.path == "/luma/agent/requests/r-1/status"
    assert req.url.params["logs"] == "1"


def test_result_returns_the_output_and_fals_billable_units(fal):
    f = fal(
        answer(200, {"video": {"url": OUTPUT_URL}}, headers={"x-fal-request-id": "r-1", "x-fal-billable-units": "5.04"})
    )
    result = f.client.result(REQUEST)
    # x-fal-billable-units: the billed quantity in the endpoint's pricing unit (§5)
    assert result.ok and result.video_url == OUTPUT_URL and result.billable_units == Decimal("5.04")


@pytest.mark.parametrize(
    ("code", "body"),
    [
        (422, {"detail": [{"loc": ["body", "video_url"], "msg": "could not download", "type": "file_download_error"}]}),
        (500, {"detail": "Runner disconnected", "error_type": "runner_disconnected"}),
    ],
    ids=["422", "500"],
)
def test_a_replayed_model_error_is_the_results_answer_and_not_repeated(fal, code, body):
    # "Failure: replays the model's status, headers and body" (§5); x-fal-request-id says fal's
    # app answered (fal-client `_maybe_retry_request`)
    f = fal(answer(code, body, headers={"x-fal-request-id": "r-1"}), answer(200, {"video": {"url": OUTPUT_URL}}))
    result = f.client.result(REQUEST)
    assert (
        not result.ok
        and result.reply.status == code
        and result.error_type == ("file_download_error" if code == 422 else "runner_disconnected")
    )
    assert len(f.requests) == 1


def test_a_gateway_error_on_the_result_is_repeated_not_taken_for_the_answer(fal):
    f = fal(NGINX_502, answer(200, {"video": {"url": OUTPUT_URL}}, headers={"x-fal-request-id": "r-1"}))
    assert f.client.result(REQUEST).ok and len(f.requests) == 2


@pytest.mark.parametrize(
    ("code", "body", "expected"),
    [
        # body {"status": OK | CANCELLATION_REQUESTED | ALREADY_COMPLETED | NOT_FOUND} (§6)
        (200, {"status": "OK"}, "OK"),
        (202, {"status": "CANCELLATION_REQUESTED"}, "CANCELLATION_REQUESTED"),
        (400, {"status": "ALREADY_COMPLETED"}, "ALREADY_COMPLETED"),
        (404, {"status": "NOT_FOUND"}, "NOT_FOUND"),
        (404, "Not Found", "HTTP 404"),
    ],
    ids=["ok", "requested", "already-completed", "not-found", "not-found-plain-text"],
)
def test_cancel_returns_fals_answer(fal, code, body, expected):
    f = fal(answer(code, text=body) if isinstance(body, str) else answer(code, body))
    assert f.client.cancel(CANCEL_URL) == expected
    (req,) = f.requests
    assert req.method == "PUT" and str(req.url) == CANCEL_URL  # PUT {base}/requests/{id}/cancel (§6)


# ---------------------------------------------------------------------- malformed answers


def _upload_call(client: FalClient, tmp_path: Path) -> object:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00" * 64)
    return client.upload(clip)


TOKEN = {
    "token": "tok-1",
    "token_type": "Bearer",
    "base_url": "https://v3.fal.media",
    "expires_at": "2999-01-01T00:00:00Z",
}


@pytest.mark.parametrize(
    ("script", "call", "message"),
    [
        ((answer(200, text="<html>oops</html>"),), "status", "status: the answer is not JSON"),
        ((answer(200, {"token_type": "Bearer"}),), "upload", "storage token: fal's answer is malformed"),
        ((answer(200, TOKEN), answer(200, {"url": "x"})), "upload", "upload clip.mp4: fal's answer is malformed"),
        ((answer(200, TOKEN), answer(200, text="stored")), "upload", "upload clip.mp4: the answer is not JSON"),
    ],
    ids=["status-not-json", "token-without-token", "upload-without-access-url", "upload-not-json"],
)
def test_a_malformed_answer_is_the_clients_malformed_answer_error(fal, tmp_path, script, call, message):
    f = fal(*script)
    with pytest.raises(TransientRemoteError) as info:
        f.client.status(STATUS_URL) if call == "status" else _upload_call(f.client, tmp_path)
    assert info.value.message.startswith(message)


@pytest.mark.parametrize("body", [["IN_QUEUE"], {"status": "SLEEPING"}], ids=["not-an-object", "unknown-status"])
def test_a_status_answer_that_is_no_status_is_a_remote_error(fal, body):
    f = fal(answer(200, body))
    with pytest.raises(RemoteError, match=r"^status: "):
        f.client.status(STATUS_URL)


# ---------------------------------------------------------------------- where the key goes


def test_the_key_goes_to_fals_queue_and_never_to_an_output_url(fal, tmp_path):
    video = b"\x00\x00\x00\x18ftypmp42" * 100
    f = fal(IN_QUEUE, answer(200, text=""))
    f.script[1] = lambda request: httpx.Response(200, content=video)
    f.client.status(STATUS_URL)
    sha, size = f.client.download(OUTPUT_URL, tmp_path / "out.mp4")
    to_queue, to_cdn = f.requests
    assert to_queue.headers["authorization"] == f"Key {SECRET}"
    assert str(to_cdn.url) == OUTPUT_URL and "authorization" not in to_cdn.headers
    assert SECRET not in str(to_cdn.headers.raw)
    assert (sha, size) == (hashlib.sha256(video).hexdigest(), len(video))
    assert (tmp_path / "out.mp4").read_bytes() == video


def test_a_redirect_away_from_fals_host_does_not_carry_the_key(fal):
    # the client follows redirects (as fal-client's sync client does, §8); the key must stay behind
    elsewhere = "https://storage.example.test/result.json"
    f = fal(answer(302, text="", headers={"Location": elsewhere}), answer(200, {"video": {"url": OUTPUT_URL}}))
    assert f.client.result(REQUEST).video_url == OUTPUT_URL
    assert str(f.requests[1].url) == elsewhere and "authorization" not in f.requests[1].headers


# ---------------------------------------------------------------------- downloads


def test_a_short_download_is_fetched_again_whole(fal, tmp_path):
    f = fal(
        lambda request: httpx.Response(200, content=b"abc", headers={"content-length": "10"}),
        lambda request: httpx.Response(200, content=b"0123456789"),
    )
    assert f.client.download(OUTPUT_URL, tmp_path / "out.mp4")[1] == 10
    assert len(f.requests) == 2 and (tmp_path / "out.mp4").read_bytes() == b"0123456789"


def test_a_missing_output_is_not_fetched_again(fal, tmp_path):
    f = fal(answer(404, {"detail": "Not Found"}), answer(200, text="late"))
    with pytest.raises(RemoteError) as info:
        f.client.download(OUTPUT_URL, tmp_path / "out.mp4")
    assert not isinstance(info.value, TransientRemoteError) and info.value.status == 404 and len(f.requests) == 1


# ---------------------------------------------------------------------- uploads


def test_an_upload_gets_a_cdn_token_with_the_key_then_sends_the_file_with_the_token(fal, tmp_path):
    f = fal(answer(200, TOKEN), answer(200, {"access_url": "https://v3.fal.media/files/a/clip.mp4"}))
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"frames" * 10)
    assert f.client.upload(clip, lifetime_s=86400) == "https://v3.fal.media/files/a/clip.mp4"
    token_call, upload_call = f.requests
    # fal-client `CDNTokenManager._refresh_token`: POST {rest}/storage/auth/token?storage_type=fal-cdn-v3, body {} (§10)
    assert token_call.method == "POST" and token_call.url.path == "/storage/auth/token"
    assert token_call.url.params["storage_type"] == "fal-cdn-v3" and json.loads(token_call.content) == {}
    assert token_call.headers["authorization"] == f"Key {SECRET}"
    # fal-client `_upload_v3`: POST {cdn}/files/upload, raw bytes, Authorization: <token_type> <token> (§10)
    assert str(upload_call.url) == f"{HOSTS.cdn}/files/upload" and upload_call.content == clip.read_bytes()
    assert upload_call.headers["authorization"] == "Bearer tok-1" and SECRET not in str(upload_call.headers.raw)
    assert upload_call.headers["content-type"] == "video/mp4" and upload_call.headers["x-fal-file-name"] == "clip.mp4"
    assert json.loads(upload_call.headers["x-fal-object-lifecycle"]) == {"expiration_duration_seconds": 86400}


def test_a_cdn_token_is_reused_until_it_is_due(fal, tmp_path):
    f = fal(answer(200, TOKEN), answer(200, {"access_url": "https://v3.fal.media/files/a/clip.mp4"}))
    _upload_call(f.client, tmp_path)
    _upload_call(f.client, tmp_path)
    assert [r.url.path for r in f.requests] == ["/storage/auth/token", "/files/upload", "/files/upload"]


# ---------------------------------------------------------------------- status stream


def _sse(*events: dict[str, Any]) -> Script:
    # fal sends a comment line as keep-alive (docs: inference-api/queue/status-stream; §4)
    text = ": keep-alive\n\n" + "".join(f"data: {json.dumps(e)}\n\n" for e in events)
    return answer(200, text=text, headers={"content-type": "text/event-stream"})


def test_the_status_stream_yields_each_status_until_completed(fal):
    f = fal(
        _sse(
            {"status": "IN_QUEUE", "queue_position": 1},
            {"status": "IN_PROGRESS", "logs": []},
            {"status": "COMPLETED", "logs": []},
            {"status": "IN_QUEUE", "queue_position": 9},  # after COMPLETED: never read
        )
    )
    assert list(f.client.stream(STATUS_URL)) == [Queued(1), InProgress(()), Completed((), None, None)]
    (req,) = f.requests
    assert req.url.path == "/luma/agent/requests/r-1/status/stream" and req.headers["accept"] == "text/event-stream"


@pytest.mark.parametrize(
    "script",
    [
        answer(503, {"detail": "busy"}),
        _sse({"status": "IN_QUEUE", "queue_position": 1}),  # ends before COMPLETED
        answer(200, text="data: {not json\n\n", headers={"content-type": "text/event-stream"}),
        answer(200, {"status": "COMPLETED"}),  # not an event stream
    ],
    ids=["503", "ends-early", "not-json", "not-sse"],
)
def test_any_trouble_on_the_stream_is_transient_so_the_caller_polls(fal, script):
    f = fal(script)
    with pytest.raises(TransientRemoteError, match=r"^status stream"):
        list(f.client.stream(STATUS_URL))
    assert len(f.requests) == 1  # the stream is not repeated: the caller falls back to polling


# ---------------------------------------------------------------------- platform API


def test_prices_are_asked_50_ids_a_call_following_each_cursor(fal):
    ids = [f"fal-ai/model-{i}" for i in range(120)]

    def pricing(request: httpx.Request) -> httpx.Response:
        asked = request.url.params["endpoint_id"].split(",")
        more = asked[0] == ids[0] and "cursor" not in request.url.params
        prices = [{"endpoint_id": e, "unit_price": 0.1, "unit": "video_second", "currency": "USD"} for e in asked]
        page = prices[:10] if more else prices[10:] if asked[0] == ids[0] else prices
        return httpx.Response(200, json={"prices": page, "next_cursor": "c2" if more else None, "has_more": more})

    f = fal(pricing)
    prices = f.client.unit_prices(ids)
    # "Accepts 1-50 endpoint IDs" (docs.fal.ai/platform-apis/v1/models/pricing; §13)
    assert [len(r.url.params["endpoint_id"].split(",")) for r in f.requests] == [50, 50, 50, 20]
    assert f.requests[1].url.params["cursor"] == "c2"
    assert set(prices) == set(ids) and prices[ids[0]] == (Decimal("0.1"), "video_second")  # never a float


def test_a_price_in_another_currency_is_refused(fal):
    f = fal(answer(200, {"prices": [{"endpoint_id": "a/b", "unit_price": 1, "unit": "video", "currency": "EUR"}]}))
    with pytest.raises(RemoteError, match="in EUR"):
        f.client.unit_prices(["a/b"])


# ---------------------------------------------------------------------- the secret


@pytest.mark.parametrize(
    ("script", "call"),
    [
        ((answer(401, {"detail": "Invalid key"}),), "submit"),
        ((answer(403, {"detail": "User is locked. Reason: Admin lock."}),), "status"),
        ((answer(500, {"detail": "boom"}),), "submit"),
        ((broken(httpx.ReadTimeout),), "submit"),
        ((broken(httpx.ConnectError),), "status"),
        ((answer(429, {"detail": "slow"}, headers={"Retry-After": "1"}),), "result"),
        ((answer(200, text="not json"),), "status"),
    ],
    ids=["401", "403-locked", "500-submit", "timeout-submit", "connect-exhausted", "429-exhausted", "not-json"],
)
def test_the_key_is_in_no_error_message_traceback_or_log(fal, caplog, script, call):
    caplog.set_level(logging.DEBUG, logger="batch_runner")
    f = fal(*script)
    with pytest.raises(RemoteError) as info:
        _ask(f.client, call)
    err = info.value
    shown = [str(err), repr(err), err.hint or "", repr(err.reply), repr(err.body), repr(f.client)]
    shown.append("".join(traceback.format_exception(err)))
    assert all(SECRET not in text for text in shown)
    assert SECRET not in caplog.text
