"""An httpx client for fal: queue (submit, status, stream, result, cancel), storage, pricing.

Speaks to fal's real hosts or, with --fal-url, to one base URL (the emulator). The key goes only
into the Authorization header; it is never logged, stored or shown.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import threading
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Iterator

import httpx

from ..config import FalHosts, Secret
from ..errors import AmbiguousSubmitError, RemoteError, TransientRemoteError
from .answers import Completed, Phase, Result, Status, parse_status, reply_of, reply_of_exception
from .transport import RetryPolicy, Transport, error_for

TIMEOUT = httpx.Timeout(60.0, connect=10.0)
STREAM_TIMEOUT = httpx.Timeout(60.0, connect=10.0, read=30.0)  # fal sends keep-alives well within this
MULTIPART_THRESHOLD = 100 * 1024 * 1024
MULTIPART_CHUNK = 10 * 1024 * 1024
DOWNLOAD_CHUNK = 1 << 20
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

    def __init__(self, hosts: FalHosts, key: Secret, *, pool: int = 32, policy: RetryPolicy | None = None,
                 stop: threading.Event | None = None) -> None:
        self.hosts = hosts
        limits = httpx.Limits(max_connections=pool * 2 + 4, max_keepalive_connections=pool * 2 + 4)
        self._http = httpx.Client(timeout=TIMEOUT, limits=limits, follow_redirects=True,
                                  headers={"Authorization": f"Key {key.reveal()}",
                                           "User-Agent": "batch-runner/0.1"})
        # Output files live on CDN hosts: fetch them without our key, so it never leaves for them.
        self._plain = httpx.Client(timeout=TIMEOUT, limits=limits, follow_redirects=True,
                                   headers={"User-Agent": "batch-runner/0.1"})
        self.stop = stop or threading.Event()
        self.transport = Transport(self._http, policy or RetryPolicy(), self.stop)
        self._cdn_token: tuple[str, str] | None = None
        self._token_lock = threading.Lock()

    def close(self) -> None:
        self._http.close()
        self._plain.close()

    # ------------------------------------------------------------------ queue

    def submit(self, endpoint_id: str, payload: dict[str, Any]) -> Submitted:
        resp = self.transport.submit(f"{self.hosts.queue}/{endpoint_id}", f"submit to {endpoint_id}", json=payload)
        try:
            data = resp.json()
            return Submitted(str(data["request_id"]), str(data["status_url"]), str(data["response_url"]),
                             str(data["cancel_url"]), data.get("queue_position"))
        except (ValueError, KeyError, TypeError) as exc:  # fal answered 2xx: it may well have queued the request
            raise AmbiguousSubmitError(f"submit to {endpoint_id}: the answer lacks a request id",
                                       hint="`batch-runner resolve` asks fal what became of it",
                                       reply=reply_of(resp)) from exc

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
        resp = self.transport.read("GET", status_url, "status", phase=Phase.STATUS,
                                   params={"logs": "1" if logs else "0"})
        return parse_status(_json_or_error(resp, "status"))

    def stream(self, status_url: str, *, logs: bool = False) -> Iterator[Status]:
        """Status events from the SSE stream until COMPLETED; raises TransientRemoteError on any
        trouble, and the caller falls back to polling. fal sends a comment line as keep-alive
        every 15 s (docs: inference-api/queue/status-stream); `accept: text/event-stream` as fal-js
        sends it (streaming.ts)."""
        try:
            self.transport.count_request()
            with self._http.stream("GET", f"{status_url}/stream", params={"logs": "1" if logs else "0"},
                                   headers={"Accept": "text/event-stream"}, timeout=STREAM_TIMEOUT) as resp:
                if resp.status_code != 200:
                    raise TransientRemoteError(f"status stream: HTTP {resp.status_code}")
                for line in resp.iter_lines():
                    if self.stop.is_set():
                        return
                    if line.startswith("data:"):
                        event = parse_status(json.loads(line[5:].strip()))
                        yield event
                        if isinstance(event, Completed):
                            return
        except (httpx.TransportError, json.JSONDecodeError, RemoteError) as exc:
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
            except httpx.TransportError as exc:
                reply = reply_of_exception(exc)
                raise TransientRemoteError(f"download: {reply.describe} ({type(exc).__name__})", reply=reply) from None
            if expected is not None and int(expected) != size:
                raise TransientRemoteError(f"download: got {size} of {expected} bytes",
                                           reply=reply_of_exception(httpx.RemoteProtocolError("short body")))
            return h.hexdigest(), size
        return self.transport.repeat(Phase.DOWNLOAD, "download", once)

    def _token(self) -> tuple[str, str]:
        with self._token_lock:
            if self._cdn_token is None:
                resp = self.transport.read("POST", f"{self.hosts.rest}/storage/auth/token", "storage token",
                                           phase=Phase.UPLOAD, params={"storage_type": "fal-cdn-v3"}, json={})
                data = resp.json()
                self._cdn_token = (f"{data['token_type']} {data['token']}", data.get("base_url") or self.hosts.cdn)
            return self._cdn_token

    def upload(self, path: Path) -> str:
        """Upload a local file to fal's storage; returns its URL (multipart above 100 MiB)."""
        auth, base = self._token()
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        headers = {"Authorization": auth, "Content-Type": ctype, "X-Fal-File-Name": path.name}
        size = path.stat().st_size
        if size <= MULTIPART_THRESHOLD:
            resp = self.transport.read("POST", f"{self.hosts.cdn}/files/upload", f"upload {path.name}",
                                       phase=Phase.UPLOAD, content=path.read_bytes(), headers=headers)
            return resp.json()["access_url"]
        start = self.transport.read("POST", f"{base}/files/upload/multipart", f"upload {path.name}",
                                    phase=Phase.UPLOAD, headers=headers)
        access, upload_id = start.json()["access_url"], start.json()["uploadId"]
        parts = []
        with path.open("rb") as fh:
            for number, chunk in enumerate(iter(lambda: fh.read(MULTIPART_CHUNK), b""), start=1):
                resp = self.transport.read("PUT", f"{access}/multipart/{upload_id}/{number}", f"upload part {number}",
                                           phase=Phase.UPLOAD, content=chunk, headers={"Authorization": auth,
                                                                   "Accept-Encoding": "identity"})
                parts.append({"partNumber": number, "etag": resp.headers["etag"]})
        self.transport.read("POST", f"{access}/multipart/{upload_id}/complete", f"upload {path.name}",
                            phase=Phase.UPLOAD, json={"parts": parts}, headers={"Authorization": auth})
        return access

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
                        raise RemoteError(f"pricing: fal prices {p['endpoint_id']} in {p['currency']}, "
                                          "and batch-runner accounts in USD only")
        return prices

    def usage(self, start: str, end: str, endpoint_ids: list[str], *, timeframe: str = "day",
              bound_to_timeframe: bool = False, tz: str = "UTC") -> list[dict[str, Any]]:
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
            params = {"start": start, "end": end, "timeframe": timeframe, "timezone": tz,
                      "bound_to_timeframe": "true" if bound_to_timeframe else "false",
                      "expand": "time_series", "endpoint_id": ",".join(chunk)}
            for page in self._pages("/models/usage", "usage", params):
                for bucket in page.get("time_series") or ():
                    for r in bucket.get("results") or ():
                        rows.append({"bucket": bucket["bucket"], **r})
        return rows

    def _pages(self, path: str, what: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every page of a platform API listing: next_cursor until has_more is false."""
        params = dict(params)
        while True:
            data = _json_or_error(self.transport.read("GET", f"{self.hosts.api}{path}", what, params=params), what)
            yield data
            if not data.get("has_more") or not data.get("next_cursor"):
                return
            params["cursor"] = data["next_cursor"]


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _json_or_error(resp: httpx.Response, what: str) -> Any:
    try:
        return resp.json()
    except ValueError as exc:
        raise TransientRemoteError(f"{what}: the answer is not JSON", reply=reply_of(resp)) from exc
