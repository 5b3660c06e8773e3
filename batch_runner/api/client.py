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
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import httpx

from ..config import FalHosts, Secret
from ..errors import RemoteError, TransientRemoteError
from .transport import RetryPolicy, Transport

TIMEOUT = httpx.Timeout(60.0, connect=10.0)
STREAM_TIMEOUT = httpx.Timeout(60.0, connect=10.0, read=30.0)  # fal sends keep-alives well within this
MULTIPART_THRESHOLD = 100 * 1024 * 1024
MULTIPART_CHUNK = 10 * 1024 * 1024
DOWNLOAD_CHUNK = 1 << 20


@dataclass(frozen=True)
class Submitted:
    request_id: str
    status_url: str
    response_url: str
    cancel_url: str
    queue_position: int | None


@dataclass(frozen=True)
class Result:
    """The answer of the result call: the output, or the replayed error."""

    status_code: int
    body: Any
    request_id: str | None
    billable_units: Decimal | None

    @property
    def ok(self) -> bool:
        return self.status_code == 200


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
        data = resp.json()
        try:
            return Submitted(data["request_id"], data["status_url"], data["response_url"], data["cancel_url"],
                             data.get("queue_position"))
        except KeyError as exc:
            raise RemoteError(f"submit to {endpoint_id}: answer lacks {exc.args[0]}") from exc

    def status(self, status_url: str, *, logs: bool = False) -> dict[str, Any]:
        resp = self.transport.read("GET", status_url, "status", params={"logs": "1" if logs else "0"})
        return resp.json()

    def stream(self, status_url: str, *, logs: bool = False) -> Iterator[dict[str, Any]]:
        """Status events from the SSE stream until COMPLETED; raises TransientRemoteError on trouble."""
        try:
            self.transport.count_request()
            with self._http.stream("GET", f"{status_url}/stream", params={"logs": "1" if logs else "0"},
                                   timeout=STREAM_TIMEOUT) as resp:
                if resp.status_code != 200:
                    raise TransientRemoteError(f"status stream: HTTP {resp.status_code}")
                for line in resp.iter_lines():
                    if self.stop.is_set():
                        return
                    if line.startswith("data:"):
                        event = json.loads(line[5:].strip())
                        yield event
                        if event.get("status") == "COMPLETED":
                            return
        except (httpx.TransportError, json.JSONDecodeError) as exc:
            raise TransientRemoteError(f"status stream: {type(exc).__name__}: {exc}") from exc
        raise TransientRemoteError("status stream ended before the request completed")

    def result(self, response_url: str) -> Result:
        # A completed request's result replays its error (4xx/5xx with x-fal-request-id): that is
        # an answer, not a failure of the call, so only transport and ingress failures are retried.
        resp = self.transport.read("GET", response_url, "result",
                                   ok=lambda r: r.status_code < 500 or "x-fal-request-id" in r.headers)
        try:
            body = resp.json()
        except ValueError:
            body = {"detail": resp.text[:300]}
        units = resp.headers.get("x-fal-billable-units")
        return Result(resp.status_code, body, resp.headers.get("x-fal-request-id"),
                      Decimal(units) if units else None)

    def cancel(self, cancel_url: str) -> str:
        resp = self.transport.read("PUT", cancel_url, "cancel", ok=lambda r: r.status_code in (200, 202, 400, 404))
        try:
            return str(resp.json().get("status"))
        except ValueError:
            return f"HTTP {resp.status_code}"

    # ------------------------------------------------------------------ files

    def download(self, url: str, target: Path) -> tuple[str, int]:
        """Stream a file to `target` (retried whole on failure); returns its sha256 and size."""
        for attempt in range(1, self.transport.policy.attempts + 1):
            h, size = hashlib.sha256(), 0
            try:
                self.transport.count_request()
                with self._plain.stream("GET", url) as resp:
                    if resp.status_code != 200:
                        raise TransientRemoteError(f"download {url}: HTTP {resp.status_code}")
                    expected = resp.headers.get("content-length")
                    with target.open("wb") as fh:
                        for chunk in resp.iter_bytes(DOWNLOAD_CHUNK):
                            fh.write(chunk)
                            h.update(chunk)
                            size += len(chunk)
                    if expected is not None and int(expected) != size:
                        raise TransientRemoteError(f"download {url}: got {size} of {expected} bytes")
                return h.hexdigest(), size
            except (httpx.TransportError, TransientRemoteError) as exc:
                err = exc if isinstance(exc, TransientRemoteError) else TransientRemoteError(
                    f"download: {type(exc).__name__}: {exc}")
                if attempt == self.transport.policy.attempts or self.stop.is_set():
                    raise err from None
                self.transport.backoff(attempt, None)
        raise AssertionError("unreachable")

    def _token(self) -> tuple[str, str]:
        with self._token_lock:
            if self._cdn_token is None:
                resp = self.transport.read("POST", f"{self.hosts.rest}/storage/auth/token", "storage token",
                                           params={"storage_type": "fal-cdn-v3"}, json={})
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
                                       content=path.read_bytes(), headers=headers)
            return resp.json()["access_url"]
        start = self.transport.read("POST", f"{base}/files/upload/multipart", f"upload {path.name}", headers=headers)
        access, upload_id = start.json()["access_url"], start.json()["uploadId"]
        parts = []
        with path.open("rb") as fh:
            for number, chunk in enumerate(iter(lambda: fh.read(MULTIPART_CHUNK), b""), start=1):
                resp = self.transport.read("PUT", f"{access}/multipart/{upload_id}/{number}", f"upload part {number}",
                                           content=chunk, headers={"Authorization": auth,
                                                                   "Accept-Encoding": "identity"})
                parts.append({"partNumber": number, "etag": resp.headers["etag"]})
        self.transport.read("POST", f"{access}/multipart/{upload_id}/complete", f"upload {path.name}",
                            json={"parts": parts}, headers={"Authorization": auth})
        return access

    # ------------------------------------------------------------------ platform API

    def unit_prices(self, endpoint_ids: list[str]) -> dict[str, tuple[Decimal, str]]:
        """Unit price and unit per endpoint from the pricing API (account discounts included)."""
        resp = self.transport.read("GET", f"{self.hosts.api}/models/pricing", "pricing",
                                   params={"endpoint_id": ",".join(endpoint_ids)})
        return {p["endpoint_id"]: (Decimal(str(p["unit_price"])), str(p["unit"])) for p in resp.json()["prices"]}

    def usage(self, start: str, end: str, endpoint_ids: list[str] | None = None,
              timeframe: str = "day") -> list[dict[str, Any]]:
        """fal's billed usage in [start, end), one row per bucket and endpoint (all pages).
        On the real fal this needs an admin key."""
        params: dict[str, Any] = {"start": start, "end": end, "timeframe": timeframe}
        if endpoint_ids:
            params["endpoint_id"] = ",".join(endpoint_ids)
        rows: list[dict[str, Any]] = []
        while True:
            data = self.transport.read("GET", f"{self.hosts.api}/models/usage", "usage", params=params).json()
            for bucket in data.get("time_series") or ():
                for r in bucket.get("results") or ():
                    rows.append({"bucket": bucket["bucket"], **r})
            if not data.get("has_more") or not data.get("next_cursor"):
                return rows
            params["cursor"] = data["next_cursor"]
