"""Shared plumbing of the emulator's routes: its state, key checks, JSON and nginx answers, call faults."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response

from ..pricing import PriceTable, load_price_table
from .config import RETRY_AFTER_S, EmulatorConfig
from .control import Holds, Outage
from .faults import FaultPlan
from .queue import Queue
from .store import FileStore
from .webhooks import WebhookSigner

# What fal's nginx ingress answers when no app saw the request: HTML, no x-fal-request-id
# (fal-client 1.0.3 `_maybe_retry_request` treats exactly this as a retryable ingress error;
# shared/reference/fal-queue-protocol.md §8).
NGINX_502 = (
    "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center>"
    "<hr><center>nginx</center></body></html>"
)
NGINX_503 = NGINX_502.replace("502 Bad Gateway", "503 Service Temporarily Unavailable")

EndpointFn = Callable[[HttpRequest], Awaitable[Response]]
RouteFn = Callable[["Emulator", HttpRequest], Awaitable[Response]]


class DropConnectionError(Exception):
    """Raised after a response has started: the server closes the connection mid-answer."""


class Dropped(Response):
    """Starts a response that promises a body, then drops the connection (a client sees a reset)."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"512")],
            }
        )
        raise DropConnectionError()


def json_answer(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def nginx(status: int) -> Response:
    """An nginx error page: 502 or 503, HTML, without x-fal-request-id."""
    return Response(NGINX_502 if status == 502 else NGINX_503, status_code=status, media_type="text/html")


class Emulator:
    """State shared by the routes: config, price table, storage, queue, faults, holds, outages, webhook key."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.prices: PriceTable = load_price_table(config.prices_path)
        self.faults = FaultPlan(config.faults, config.seed)
        self._tmp = None if config.data_dir else tempfile.TemporaryDirectory(prefix="fal-emulator-")
        root = Path(config.data_dir or self._tmp.name)  # type: ignore[union-attr]
        self.store = FileStore(root / "files")
        self.signer = WebhookSigner(config.user_id)
        self.queue: Queue | None = None
        self.cdn_tokens: dict[str, float] = {}
        self.calls: dict[str, int] = {}  # per-key call counters, the keys of call faults
        self.http_requests: dict[str, int] = {}  # served requests by kind: api, download, inspection
        self.holds = Holds()
        self.holds.submit.arm(config.hold_submit_s, config.hold_submit_count)
        self.holds.download.arm(config.hold_download_s, config.hold_download_count)
        self.outage = Outage(self.faults.outages, config.scaled)
        self.root = root

    def base_url(self, request: HttpRequest) -> str:
        return str(request.base_url).rstrip("/")

    def api_key(self, request: HttpRequest) -> str | None:
        """The key of an `Authorization: Key …` header, or None."""
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        return key.strip() or None if scheme.lower() == "key" else None

    def authorized(self, request: HttpRequest) -> bool:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() not in ("key", "bearer") or not key.strip():
            return False
        if scheme.lower() == "bearer":
            return key in self.cdn_tokens or self.config.keys is None
        return self.config.keys is None or key.strip() in self.config.keys

    def is_admin(self, request: HttpRequest) -> bool:
        """Whether the key may use admin-only platform routes (any key when admin_keys is None)."""
        return self.config.admin_keys is None or self.api_key(request) in self.config.admin_keys

    def count(self, *key: object) -> int:
        """Count one more call under `key`: 1 for the first, 2 for the next, …"""
        k = "|".join(map(str, key))
        self.calls[k] = self.calls.get(k, 0) + 1
        return self.calls[k]

    def call_fault(self, *key: object) -> Response | None:
        """429 or an nginx 502/503 for this call, if the plan says so (the call is counted under `key`)."""
        return self.call_fault_at(self.count(*key), *key)

    def call_fault_at(self, n: int, *key: object) -> Response | None:
        """429 or an nginx 502/503 for the `n`th call under `key`, if the plan says so."""
        if self.faults.fires("rate_limit", *key, n):
            return json_answer({"detail": "Rate limit exceeded"}, 429, {"Retry-After": str(RETRY_AFTER_S)})
        if self.faults.fires("bad_gateway", *key, n):
            odd = self.faults.fired.get("bad_gateway", 1) % 2  # alternate 502 and 503
            return nginx(502 if odd else 503)
        return None

    def outage_answer(self, *, submit: bool = False) -> Response | None:
        """An nginx 502/503 while an outage covers this route, before any key check: nginx answers first."""
        if not self.outage.active(submit=submit):
            return None
        self.outage.answered += 1
        self.faults.note("outage")
        return nginx(502 if self.outage.answered % 2 else 503)  # alternate, as a flapping ingress does


def unauthorized() -> JSONResponse:
    return json_answer({"detail": "Missing or invalid credentials: send 'Authorization: Key <FAL_KEY>'"}, 401)


def handler(*, auth: bool = True) -> Callable[[RouteFn], EndpointFn]:
    """Wrap a route: pass it the Emulator, and answer 401 first when a key is required but missing."""

    def wrap(func: RouteFn) -> EndpointFn:
        async def endpoint(request: HttpRequest) -> Response:
            emu: Emulator = request.app.state.emu
            if auth and not emu.authorized(request):
                return unauthorized()
            return await func(emu, request)

        endpoint.__name__ = func.__name__
        return endpoint

    return wrap


class BadBodyError(Exception):
    """The request body is not the JSON object the route needs."""


async def read_body(request: HttpRequest) -> dict[str, Any]:
    try:
        data = json.loads(await request.body() or b"{}")
    except json.JSONDecodeError:
        raise BadBodyError("body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadBodyError("body must be a JSON object")
    return data
