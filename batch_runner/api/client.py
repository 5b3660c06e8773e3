"""An httpx client for fal: queue (submit, status, stream, result, cancel), storage, pricing.

Speaks to fal's real hosts or, with --fal-url, to one base URL (the emulator). The key goes only
into the Authorization header; it is never logged, stored or shown.
"""

from __future__ import annotations

import functools
import hashlib
import json
import mimetypes
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import EventSource, SSEError

from ..config import FalHosts, Secret
from ..errors import AmbiguousSubmitError, AuthError, RemoteError, TransientRemoteError
from ..logs import get_logger
from .answers import Completed, Phase, Reply, Result, Status, parse_status, reply_of, reply_of_exception
from .storage import CdnToken, lifecycle_headers
from .transport import RetryPolicy, Transport, error_for

log = get_logger("api")

TIMEOUT = httpx.Timeout(60.0, connect=10.0)
STREAM_TIMEOUT = httpx.Timeout(60.0, connect=10.0, read=30.0)  # fal sends keep-alives well within this
# Files above 90 MiB go up in 10 MiB parts through fal-js's initiate-multipart flow
# (fal-js:libs/client/src/storage.ts `upload`: `file.size > 90 * 1024 * 1024`; `multipartUpload`:
# `chunkSize = 10 * 1024 * 1024`). fal-client's own multipart starts only above 100 MiB
# (fal:projects/fal_client/src/fal_client/client.py MULTIPART_THRESHOLD) and sends a 90-100 MiB file
# in one part; of the two clients only fal-js splits a file of that size, so its flow is the one
# a fal client is known to use there. Its parts are authorised by the signed upload URL, not by
# the CDN token, so a long upload cannot outlive its token halfway through.
MULTIPART_THRESHOLD = 90 * 1024 * 1024
MULTIPART_CHUNK = 10 * 1024 * 1024
DOWNLOAD_CHUNK = 1 << 20


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context for every client in this process, built on first use: httpx builds and
    loads the CA bundle into a new one for each client otherwise, about 25 ms of CPU each and four
    clients per run. Built as httpx builds its default (certifi's bundle, or SSL_CERT_FILE /
    SSL_CERT_DIR when set); a context is safe to share between clients and threads."""
    return httpx.create_ssl_context()


def _utcnow() -> datetime:
    return datetime.now(UTC)


ENDPOINT_IDS_MAX = 50  # the platform API's endpoint_id filters take 1-50 ids


@dataclass(frozen=True)
class Submitted:
    request_id: str
    status_url: str
    response_url: str
    cancel_url: str
    queue_position: int | None


class FalClient:
    """Thread-safe: one client serves every worker thread."""

    def __init__(
        self,
        hosts: FalHosts,
        key: Secret,
        *,
        pool: int = 32,
        policy: RetryPolicy | None = None,
        stop: threading.Event | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """`transport` replaces the wire for both clients (tests pass an httpx.MockTransport);
        None keeps httpx's own network transport."""
        self.hosts = hosts
        limits = httpx.Limits(max_connections=pool * 2 + 4, max_keepalive_connections=pool * 2 + 4)
        self._http = httpx.Client(
            timeout=TIMEOUT,
            limits=limits,
            follow_redirects=True,
            headers={"Authorization": f"Key {key.reveal()}", "User-Agent": "batch-runner/0.1"},
            transport=transport,
            verify=tls_context(),
        )
        # Output files live on CDN hosts: fetch them without our key, so it never leaves for them.
        self._plain = httpx.Client(
            timeout=TIMEOUT,
            limits=limits,
            follow_redirects=True,
            headers={"User-Agent": "batch-runner/0.1"},
            transport=transport,
            verify=tls_context(),
        )
        self.stop = stop or threading.Event()
        self.transport = Transport(self._http, policy or RetryPolicy(), self.stop)
        self._cdn_token: CdnToken | None = None
        self._token_lock = threading.Lock()

    def close(self) -> None:
        self._http.close()
        self._plain.close()

    # ------------------------------------------------------------------ queue

    def submit(self, endpoint_id: str, payload: dict[str, Any]) -> Submitted:
        resp = self.transport.submit(f"{self.hosts.queue}/{endpoint_id}", f"submit to {endpoint_id}", json=payload)
        try:
            data = resp.json()
            return Submitted(
                str(data["request_id"]),
                str(data["status_url"]),
                str(data["response_url"]),
                str(data["cancel_url"]),
                data.get("queue_position"),
            )
        except (ValueError, KeyError, TypeError) as exc:  # fal answered 2xx: it may well have queued the request
            raise AmbiguousSubmitError(
                f"submit to {endpoint_id}: the answer lacks a request id",
                hint="`batch-runner resolve` asks fal what became of it",
                reply=reply_of(resp),
            ) from exc

    def request_urls(self, endpoint_id: str, request_id: str) -> Submitted:
        """The status, result and cancel URLs of a request found through fal's request listing
        (its submit answer was lost). fal's docs say to use the URLs from the submit answer; when
        there is none, fal's own clients build them from owner/alias only (fal-client
        `AppId.from_endpoint_id` + `_get_request_url`; fal-js queue.ts), and so do we."""
        parts = endpoint_id.split("/")
        owner_alias = "/".join(parts[:3] if parts[0] in ("workflows", "comfy") else parts[:2])
        base = f"{self.hosts.queue}/{owner_alias}/requests/{request_id}"
        return Submitted(request_id, f"{base}/status", base, f"{base}/cancel", None)

    def status(self, status_url: str, *, logs: bool = False) -> Status:
        resp = self.transport.read(
            "GET", status_url, "status", phase=Phase.STATUS, params={"logs": "1" if logs else "0"}
        )
        return parse_status(_json_or_error(resp, "status"))

    def stream(self, status_url: str, *, logs: bool = False) -> Iterator[Status]:
        """Status events from the SSE stream until COMPLETED; raises TransientRemoteError on any
        trouble, and the caller falls back to polling. fal sends a comment line as keep-alive
        every 15 s (docs: inference-api/queue/status-stream); `accept: text/event-stream` as fal-js
        sends it (streaming.ts)."""
        try:
            self.transport.count_request()
            with self._http.stream(
                "GET",
                f"{status_url}/stream",
                params={"logs": "1" if logs else "0"},
                headers={"Accept": "text/event-stream"},
                timeout=STREAM_TIMEOUT,
            ) as resp:
                if resp.status_code != 200:
                    raise TransientRemoteError(f"status stream: HTTP {resp.status_code}")
                # httpx-sse parses the stream as the SSE spec says (comment keep-alives skipped,
                # multi-line data joined), as fal-js's eventsource-parser does (streaming.ts)
                for sse in EventSource(resp).iter_sse():
                    if self.stop.is_set():
                        return
                    if not sse.data:
                        continue
                    event = parse_status(json.loads(sse.data))
                    yield event
                    if isinstance(event, Completed):
                        return
        except (httpx.RequestError, json.JSONDecodeError, SSEError, RemoteError) as exc:
            if isinstance(exc, TransientRemoteError):
                raise
            raise TransientRemoteError(f"status stream: {type(exc).__name__}") from exc
        raise TransientRemoteError("status stream ended before the request completed")

    def result(self, response_url: str) -> Result:
        """The request's answer: its output, or the model's error replayed with x-fal-request-id
        (§5). A failed call (429, 5xx from the gateway, 401…) raises after its retries; it is
        never taken for the request's answer."""
        resp = self.transport.read("GET", response_url, "result", phase=Phase.RESULT)
        try:
            body = resp.json()
        except ValueError:
            body = {"detail": resp.text[:300]}
        return Result(reply_of(resp), body)

    def cancel(self, cancel_url: str) -> str:
        resp = self.transport.read("PUT", cancel_url, "cancel", phase=Phase.CANCEL)
        try:
            return str(resp.json().get("status"))
        except (ValueError, AttributeError):
            return f"HTTP {resp.status_code}"

    # ------------------------------------------------------------------ files

    def download(self, url: str, target: Path) -> tuple[str, int]:
        """Stream a file to `target` (repeated whole while `retry_call` allows); returns its
        sha256 and size. A local write failure (a full disk, a folder that cannot be written)
        raises OSError at once: it is not fal's fault and repeating the download cannot help."""

        def once() -> tuple[str, int]:
            h, size = hashlib.sha256(), 0
            self.transport.count_request()
            try:
                with self._plain.stream("GET", url) as resp:
                    if resp.status_code != 200:
                        resp.read()
                        raise error_for(resp, "download")
                    expected = resp.headers.get("content-length")
                    with target.open("wb") as fh:
                        for chunk in resp.iter_bytes(DOWNLOAD_CHUNK):
                            fh.write(chunk)
                            h.update(chunk)
                            size += len(chunk)
            except httpx.RequestError as exc:
                reply = reply_of_exception(exc)
                raise TransientRemoteError(f"download: {reply.describe} ({type(exc).__name__})", reply=reply) from None
            if expected is not None and int(expected) != size:
                raise TransientRemoteError(
                    f"download: got {size} of {expected} bytes",
                    reply=reply_of_exception(httpx.RemoteProtocolError("short body")),
                )
            return h.hexdigest(), size

        return self.transport.repeat(Phase.DOWNLOAD, "download", once)

    def _token(self, stale: CdnToken | None = None) -> CdnToken:
        """The CDN upload token, fetched again when it is due for refresh or when `stale` (a token
        fal just refused) is still the one we hold; another thread may have replaced it already."""
        with self._token_lock:
            held = self._cdn_token
            if held is None or held is stale or held.due(_utcnow()):
                resp = self.transport.read(
                    "POST",
                    f"{self.hosts.rest}/storage/auth/token",
                    "storage token",
                    phase=Phase.UPLOAD,
                    params={"storage_type": "fal-cdn-v3"},
                    json={},
                )
                with malformed("storage token"):
                    held = self._cdn_token = CdnToken.from_answer(_json_or_error(resp, "storage token"), _utcnow())
            return held

    def upload(self, path: Path, *, lifetime_s: int | None = None) -> str:
        """Upload a local file to fal's storage; returns its URL. `lifetime_s` asks fal to keep it
        that long (fal's object-lifecycle headers); without it the account's retention applies.
        Above 90 MiB it goes up in parts (see MULTIPART_THRESHOLD)."""
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        lifecycle = lifecycle_headers(lifetime_s)
        if path.stat().st_size > MULTIPART_THRESHOLD:
            return self._upload_parts(path, ctype, lifecycle)
        token = self._token()
        try:
            return self._upload_whole(path, ctype, lifecycle, token)
        except AuthError as exc:
            # The token expired early (clock skew) or was revoked: fetch another, once. Our key is
            # not in question here (the token endpoint took it), so this is not a pool-stopping AuthError.
            log.info("upload %s: the CDN refused its token (%s); fetching a new token", path.name, exc.message)
        try:
            return self._upload_whole(path, ctype, lifecycle, self._token(stale=token))
        except AuthError as exc:  # a fresh token refused too: this file's upload fails, not every worker
            raise _not_our_key(
                exc, f"upload {path.name}: fal's storage refused a fresh upload token ({exc.message})"
            ) from None

    def _upload_whole(self, path: Path, ctype: str, lifecycle: dict[str, str], token: CdnToken) -> str:
        """One POST to the fixed CDN host (fal:…/fal_client/client.py `_upload_v3`: `CDN_URL + "/files/upload"`)."""
        headers = {"Authorization": token.header, "Content-Type": ctype, "X-Fal-File-Name": path.name, **lifecycle}
        resp = self.transport.read(
            "POST",
            f"{self.hosts.cdn}/files/upload",
            f"upload {path.name}",
            phase=Phase.UPLOAD,
            content=path.read_bytes(),
            headers=headers,
        )
        with malformed(f"upload {path.name}"):
            return str(_json_or_error(resp, f"upload {path.name}")["access_url"])

    def _upload_parts(self, path: Path, ctype: str, lifecycle: dict[str, str]) -> str:
        """fal-js's multipart flow (fal-js:libs/client/src/storage.ts `multipartUpload`):
        `POST {rest}/storage/upload/initiate-multipart?storage_type=fal-cdn-v3` with the API key,
        JSON `{content_type, file_name}` and the lifecycle header → `{upload_url, file_url}`; each
        10 MiB part `PUT {upload_url origin+path}/{n}{upload_url query}` → JSON `{partNumber, etag}`,
        one after another; then `POST {origin+path}/complete{query}` with JSON
        `{"parts": [{partNumber, etag}]}`. The file's URL is `file_url`. fal-js sends no key to the
        upload URL (plain `fetch`), and neither do we."""
        try:
            return self._upload_parts_once(path, ctype, lifecycle)
        except RemoteError as exc:
            if not (isinstance(exc.reply, Reply) and exc.reply.keyless and exc.reply.status in (401, 403)):
                raise
            # the signed upload URL was refused (it expired during a slow upload): start over once
            log.info("upload %s: the signed upload URL was refused (%s); starting over", path.name, exc.message)
            return self._upload_parts_once(path, ctype, lifecycle)

    def _upload_parts_once(self, path: Path, ctype: str, lifecycle: dict[str, str]) -> str:
        what = f"upload {path.name}"
        start = self.transport.read(
            "POST",
            f"{self.hosts.rest}/storage/upload/initiate-multipart",
            what,
            phase=Phase.UPLOAD,
            params={"storage_type": "fal-cdn-v3"},
            json={"content_type": ctype, "file_name": path.name},
            headers=lifecycle,
        )
        answer = _json_or_error(start, what)
        with malformed(what):
            upload_url, file_url = str(answer["upload_url"]), str(answer["file_url"])
        parts = []
        with path.open("rb") as fh:
            for number, chunk in enumerate(iter(lambda: fh.read(MULTIPART_CHUNK), b""), start=1):
                resp = self._unkeyed(
                    "PUT", _beside(upload_url, str(number)), f"upload part {number} of {path.name}", content=chunk
                )
                part = _json_or_error(resp, f"upload part {number} of {path.name}")
                with malformed(f"upload part {number} of {path.name}"):
                    parts.append({"partNumber": int(part["partNumber"]), "etag": str(part["etag"])})
        self._unkeyed("POST", _beside(upload_url, "complete"), what, json={"parts": parts})
        return file_url

    def _unkeyed(self, method: str, url: str, what: str, **kw: Any) -> httpx.Response:
        """A storage call to a signed URL, without our key, repeated as any upload call is."""

        def once() -> httpx.Response:
            self.transport.count_request()
            try:
                resp = self._plain.request(method, url, **kw)
            except httpx.RequestError as exc:
                reply = reply_of_exception(exc)
                raise TransientRemoteError(f"{what}: {reply.describe} ({type(exc).__name__})", reply=reply) from None
            if not resp.is_success:
                err = error_for(resp, what)
                if isinstance(err, AuthError):  # our key was not sent: the signed URL was refused, not the key
                    raise _not_our_key(
                        err,
                        f"{what}: the signed upload URL was refused (HTTP {resp.status_code})",
                        hint="it may have expired; the upload is started again",
                    )
                raise err
            return resp

        return self.transport.repeat(Phase.UPLOAD, what, once)

    # ------------------------------------------------------------------ platform API

    def unit_prices(self, endpoint_ids: list[str]) -> dict[str, tuple[Decimal, str]]:
        """Unit price and unit per endpoint from the pricing API (account discounts included),
        at most 50 ids a call: "Accepts 1-50 endpoint IDs" (https://docs.fal.ai/platform-apis/v1/models/pricing).
        fal sends the price as a JSON number: read through str() into Decimal, never kept as a float."""
        prices: dict[str, tuple[Decimal, str]] = {}
        for chunk in _chunks(endpoint_ids, ENDPOINT_IDS_MAX):
            for page in self._pages("/models/pricing", "pricing", {"endpoint_id": ",".join(chunk)}):
                for p in page.get("prices") or ():
                    try:
                        prices[str(p["endpoint_id"])] = (Decimal(str(p["unit_price"])), str(p["unit"]))
                    except (KeyError, TypeError, InvalidOperation) as exc:
                        raise RemoteError(f"pricing: fal's answer has a malformed price: {str(p)[:200]}") from exc
                    if str(p.get("currency") or "USD").upper() != "USD":  # every sum here is USD
                        raise RemoteError(
                            f"pricing: fal prices {p['endpoint_id']} in {p['currency']}, "
                            "and batch-runner accounts in USD only"
                        )
        return prices

    def usage(
        self,
        start: str,
        end: str,
        endpoint_ids: list[str],
        *,
        timeframe: str = "day",
        bound_to_timeframe: bool = False,
        tz: str = "UTC",
    ) -> list[dict[str, Any]]:
        """fal's billed usage, one row per bucket and endpoint (all pages; admin key).

        As https://docs.fal.ai/platform-apis/v1/models/usage documents it: endpoint_id "Must
        provide at least 1 endpoint ID (1-50 models)", so the ids go 50 a call; expand: "At least
        one of 'time_series' or 'summary' is required"; bound_to_timeframe "Defaults to true"
        (start moved to the start of its day, end to the start of the next), so we say whether
        we want the exact window; timezone "controls how dates are bucketed", so we name UTC.
        """
        if not endpoint_ids:
            raise ValueError("the usage API needs at least one endpoint id")
        rows: list[dict[str, Any]] = []
        for chunk in _chunks(endpoint_ids, ENDPOINT_IDS_MAX):
            params = {
                "start": start,
                "end": end,
                "timeframe": timeframe,
                "timezone": tz,
                "bound_to_timeframe": "true" if bound_to_timeframe else "false",
                "expand": "time_series",
                "endpoint_id": ",".join(chunk),
            }
            for page in self._pages("/models/usage", "usage", params):
                with malformed("usage"):
                    for bucket in page.get("time_series") or ():
                        for r in bucket.get("results") or ():
                            rows.append({"bucket": bucket["bucket"], **r})
        return rows

    def _pages(self, path: str, what: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every page of a platform API listing: next_cursor until has_more is false."""
        params = dict(params)
        while True:
            data = _json_or_error(self.transport.read("GET", f"{self.hosts.api}{path}", what, params=params), what)
            if not isinstance(data, dict):
                raise TransientRemoteError(f"{what}: fal's answer is not a JSON object")
            yield data
            if not data.get("has_more") or not data.get("next_cursor"):
                return
            params["cursor"] = data["next_cursor"]


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _not_our_key(err: AuthError, message: str, *, hint: str | None = None) -> RemoteError:
    """A 401/403 on a call our key did not authorise (a CDN token, a signed URL): that call's
    failure (`Reply.keyless`, see outcome.decide), never an account stop for every worker."""
    reply = err.reply if isinstance(err.reply, Reply) else Reply(status=err.status)
    return RemoteError(message, hint=hint, reply=replace(reply, keyless=True))


@contextmanager
def malformed(what: str) -> Iterator[None]:
    """fal's answer lacks a field or has one of the wrong type: one clear error, never a traceback."""
    try:
        yield
    except (KeyError, TypeError, AttributeError, ValueError, ArithmeticError) as exc:
        raise TransientRemoteError(f"{what}: fal's answer is malformed ({type(exc).__name__})") from None


def _beside(signed_url: str, name: str) -> str:
    """`{origin}{pathname}/{name}{search}` as fal-js joins them (storage.ts `multipartUpload`), on
    the URL's text: its path stays encoded exactly as fal signed it (`%2F` stays `%2F`)."""
    base, sep, query = signed_url.partition("?")
    return f"{base}/{name}{sep}{query}"


def _json_or_error(resp: httpx.Response, what: str) -> Any:
    try:
        return resp.json()
    except ValueError as exc:
        raise TransientRemoteError(f"{what}: the answer is not JSON", reply=reply_of(resp)) from exc
