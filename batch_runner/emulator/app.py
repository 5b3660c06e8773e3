"""The emulator's HTTP app: queue, storage, platform and webhook-key routes of every fal host.

Paths never collide across fal's hosts, so one port serves them all: queue (`/{endpoint_id}`,
`…/requests/{id}[/status[/stream]|/cancel]`), REST storage (`/storage/…`), CDN (`/files/…`),
platform (`/v1/models/…`), the JWKS (`/.well-known/jwks.json`) and `/_emulator/…` inspection.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .. import catalog
from ..pricing import PriceTable, load_price_table
from .config import RETRY_AFTER_S, EmulatorConfig
from .faults import FaultPlan
from .queue import COMPLETED, Queue, Request, canonical_hash, iso
from .store import FileStore
from .webhooks import WebhookSigner

NGINX_502 = "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center>" \
            "<hr><center>nginx</center></body></html>"
NGINX_503 = NGINX_502.replace("502 Bad Gateway", "503 Service Temporarily Unavailable")
LOCKED = "User is locked. Reason: Exhausted balance. Top up your balance at fal.ai/dashboard/billing."
SLOW_CHUNK = 64 * 1024
SLOW_DELAY_S = 0.05


class DropConnection(Exception):
    """Raised after a response has started: the server closes the connection mid-answer."""


class _Dropped(Response):
    """Starts a response that promises a body, then drops the connection (a client sees a reset)."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"512")]})
        raise DropConnection()


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


class Emulator:
    """State shared by the routes: config, price table, storage, queue, faults, webhook key."""

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
        self.root = root

    # ------------------------------------------------------------------ helpers

    def base_url(self, request: HttpRequest) -> str:
        return str(request.base_url).rstrip("/")

    def authorized(self, request: HttpRequest) -> bool:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() not in ("key", "bearer") or not key.strip():
            return False
        if scheme.lower() == "bearer":
            return key in self.cdn_tokens or self.config.keys is None
        return self.config.keys is None or key.strip() in self.config.keys

    def _count(self, *key: object) -> int:
        k = "|".join(map(str, key))
        self.calls[k] = self.calls.get(k, 0) + 1
        return self.calls[k]

    def call_fault(self, *key: object) -> Response | None:
        """429 or an nginx 502/503 for this call, if the plan says so."""
        n = self._count(*key)
        if self.faults.fires("rate_limit", *key, n):
            return _json({"detail": "Rate limit exceeded"}, 429, {"Retry-After": str(RETRY_AFTER_S)})
        if self.faults.fires("bad_gateway", *key, n):
            odd = self.faults.fired.get("bad_gateway", 1) % 2  # alternate 502 and 503
            return Response(NGINX_502 if odd else NGINX_503, status_code=502 if odd else 503, media_type="text/html")
        return None


def _unauthorized() -> JSONResponse:
    return _json({"detail": "Missing or invalid credentials: send 'Authorization: Key <FAL_KEY>'"}, 401)


def handler(*, auth: bool = True) -> Any:
    """Wrap a route: pass it the Emulator, and answer 401 first when a key is required but missing."""

    def wrap(func: Any) -> Any:
        async def endpoint(request: HttpRequest) -> Response:
            emu: Emulator = request.app.state.emu
            if auth and not emu.authorized(request):
                return _unauthorized()
            return await func(emu, request)

        endpoint.__name__ = func.__name__
        return endpoint

    return wrap


class BadBody(Exception):
    """The request body is not the JSON object the route needs."""


async def _body(request: HttpRequest) -> dict[str, Any]:
    try:
        data = json.loads(await request.body() or b"{}")
    except json.JSONDecodeError:
        raise BadBody("body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadBody("body must be a JSON object")
    return data


# ---------------------------------------------------------------------- queue


def _find_request(emu: Emulator, prefix: str, rid: str) -> Request | None:
    assert emu.queue is not None
    req = emu.queue.requests.get(rid)
    if req is None:
        return None
    owner_alias = "/".join(req.endpoint.id.split("/")[:2])
    return req if prefix in (owner_alias, req.endpoint.id) else None


async def queue_route(request: HttpRequest) -> Response:
    emu: Emulator = request.app.state.emu
    path = request.url.path.strip("/")
    parts = path.split("/")
    if "requests" in parts:
        i = len(parts) - 1 - parts[::-1].index("requests")
        prefix, rest = "/".join(parts[:i]), parts[i + 1:]
        if not rest:
            return _json({"detail": "Not found"}, 404)
        if not emu.authorized(request):
            return _unauthorized()
        rid, tail = rest[0], "/".join(rest[1:])
        fault = emu.call_fault(rid, request.method, tail)
        if fault is not None:
            return fault
        req = _find_request(emu, prefix, rid)
        if request.method == "GET" and tail == "status":
            return _status(emu, req, request)
        if request.method == "GET" and tail == "status/stream":
            if emu.faults.fires("stream_unavailable", rid):
                return Response(NGINX_503, status_code=503, media_type="text/html")
            return _stream(emu, req, request)
        if request.method == "GET" and tail == "":
            return _result(req, emu.config.send_billable_units)
        if request.method == "PUT" and tail == "cancel":
            if req is None:
                return _json({"status": "NOT_FOUND"}, 404)
            assert emu.queue is not None
            code, status = emu.queue.cancel(req)
            return _json({"status": status}, code)
        return _json({"detail": "Not found"}, 404)
    if request.method != "POST":
        return _json({"detail": "Method not allowed"}, 405)
    return await _submit(emu, path, request)


async def _submit(emu: Emulator, path: str, request: HttpRequest) -> Response:
    try:
        ep = catalog.endpoint(path)
    except KeyError:
        return _json({"detail": f"Application '{path}' not found"}, 404)
    if not emu.authorized(request):
        return _unauthorized()
    try:
        payload = await _body(request)
    except BadBody as exc:
        return _json({"detail": [{"loc": ["body"], "msg": str(exc), "type": "value_error"}]}, 422)
    assert emu.queue is not None
    input_hash = canonical_hash(ep.id, payload)
    n = emu.queue.submission_number(input_hash)
    refusal = emu.call_fault("submit", input_hash, n)
    if refusal is None and emu.faults.fires("lock", input_hash, n):
        refusal = _json({"detail": LOCKED}, 403)
    if refusal is None and emu.faults.fires("gateway_timeout", input_hash, n):
        refusal = _json({"detail": "Request timed out", "error_type": "request_timeout"}, 504,
                        {"X-Fal-Error-Type": "request_timeout"})
    if refusal is None:
        issues = ep.validate(payload, allow_extra=True)
        if issues:
            refusal = _json({"detail": [i.as_detail() for i in issues]}, 422)
    if refusal is not None:
        emu.queue.record_refused(ep.id, input_hash, refusal.status_code, refusal.body.decode()[:300])
        return refusal
    webhook = request.query_params.get("fal_webhook")
    req = emu.queue.submit(ep, payload, input_hash, n, webhook, emu.base_url(request))
    if emu.faults.fires("drop_after_submit", input_hash, n):
        return _Dropped()
    body = emu.queue.status_body(req, False)
    body.pop("logs", None)
    body.setdefault("queue_position", emu.queue.position(req))
    body["status"] = "IN_QUEUE"
    body["gateway_request_id"] = req.id
    return _json(body, 200, {"x-fal-request-id": req.id})


def _logs_wanted(request: HttpRequest) -> bool:
    return request.query_params.get("logs", "0").lower() in ("1", "true", "yes")


def _status(emu: Emulator, req: Request | None, request: HttpRequest) -> Response:
    if req is None:
        return _json({"detail": "Request not found"}, 404)
    assert emu.queue is not None
    body = emu.queue.status_body(req, _logs_wanted(request))
    return _json(body, 200 if req.state == COMPLETED else 202, {"x-fal-request-id": req.id})


def _stream(emu: Emulator, req: Request | None, request: HttpRequest) -> Response:
    if req is None:
        return _json({"detail": "Request not found"}, 404)
    assert emu.queue is not None
    queue, logs, keepalive = emu.queue, _logs_wanted(request), emu.config.keepalive_s

    async def events() -> AsyncIterator[bytes]:
        while True:
            # Take the change event *before* reading the status: a change while this event is
            # being sent then sets `waiter`, instead of being missed until the next keep-alive.
            waiter = req.changed
            body = queue.status_body(req, logs)
            yield f"data: {json.dumps(body)}\n\n".encode()
            if body["status"] == COMPLETED:
                return
            try:  # one event per change, and the status again as a keep-alive
                await asyncio.wait_for(waiter.wait(), keepalive)
            except asyncio.TimeoutError:
                pass

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "x-fal-request-id": req.id})


def _result(req: Request | None, send_units: bool = True) -> Response:
    if req is None:
        return _json({"detail": "Request not found"}, 404)
    if req.state != COMPLETED:
        return _json({"detail": "Request is still in progress"}, 400)
    if req.expires_at is not None and time.time() >= req.expires_at:
        return _json({"detail": "Request result has expired"}, 404)
    headers = {"x-fal-request-id": req.id}
    if req.billable_units is not None and send_units:
        headers["x-fal-billable-units"] = f"{req.billable_units:f}"
    if req.error_type and req.result_status >= 500:
        headers["X-Fal-Error-Type"] = req.error_type
    return _json(req.result_body, req.result_status, headers)


# ---------------------------------------------------------------------- storage


@handler()
async def storage_token(emu: Emulator, request: HttpRequest) -> Response:
    token = f"cdn-{len(emu.cdn_tokens)}-{int(time.time() * 1000)}"
    expires = datetime.now(timezone.utc) + timedelta(hours=1)
    emu.cdn_tokens[token] = expires.timestamp()
    return _json({"token": token, "token_type": "Bearer", "base_url": emu.base_url(request),
                  "expires_at": expires.isoformat()})


@handler()
async def storage_initiate(emu: Emulator, request: HttpRequest) -> Response:
    try:
        body = await _body(request)
    except BadBody as exc:
        return _json({"detail": str(exc)}, 422)
    token, f = emu.store.initiate(body.get("file_name"), body.get("content_type"))
    base = emu.base_url(request)
    return _json({"upload_url": f"{base}/storage/upload/target/{token}", "file_url": emu.store.url(base, f)})


@handler(auth=False)  # the upload URL itself is the credential, as with a signed URL
async def storage_put(emu: Emulator, request: HttpRequest) -> Response:
    f = emu.store.put_pending(request.path_params["token"], await request.body())
    return _json({"detail": "unknown upload"}, 404) if f is None else Response(status_code=200)


@handler()
async def cdn_upload(emu: Emulator, request: HttpRequest) -> Response:
    data = await request.body()
    fault = emu.call_fault("upload", canonical_hash("upload", {"size": len(data)}))
    if fault is not None:
        return fault
    f = emu.store.put(data, request.headers.get("x-fal-file-name"), request.headers.get("content-type"))
    return _json({"access_url": emu.store.url(emu.base_url(request), f), "content_type": f.content_type,
                  "file_name": f.name, "file_size": f.size})


@handler()
async def cdn_multipart_start(emu: Emulator, request: HttpRequest) -> Response:
    upload_id, f = emu.store.start_multipart(request.headers.get("x-fal-file-name"), request.headers.get("content-type"))
    return _json({"access_url": emu.store.url(emu.base_url(request), f), "uploadId": upload_id})


@handler(auth=False)
async def cdn_file(emu: Emulator, request: HttpRequest) -> Response:
    """GET a file (public, with Range), or PUT a part / POST completion of a multipart upload."""
    fid, name, rest = request.path_params["fid"], unquote(request.path_params["name"]), request.path_params.get("rest", "")
    if rest:
        if not emu.authorized(request):
            return _unauthorized()
        bits = rest.split("/")
        if len(bits) == 3 and bits[0] == "multipart" and request.method == "PUT" and bits[2].isdigit():
            etag = emu.store.put_part(fid, bits[1], int(bits[2]), await request.body())
            return _json({"detail": "unknown upload"}, 404) if etag is None else Response(headers={"ETag": etag})
        if len(bits) == 3 and bits[0] == "multipart" and bits[2] == "complete" and request.method == "POST":
            try:
                parts = (await _body(request)).get("parts") or []
            except BadBody as exc:
                return _json({"detail": str(exc)}, 422)
            f = emu.store.complete_multipart(fid, bits[1], parts)
            if f is None:
                return _json({"detail": "parts missing or out of order"}, 400)
            return _json({"access_url": emu.store.url(emu.base_url(request), f)})
        return _json({"detail": "Not found"}, 404)
    f = emu.store.get(fid)
    if f is None or not f.complete or f.name != name:
        return _json({"detail": "File not found"}, 404)
    n = emu._count("download", fid)
    if emu.faults.fires("truncate_download", fid, n):
        return _Truncated(f.path, f.content_type)
    if emu.faults.fires("slow_download", fid, n):
        return StreamingResponse(_slow(f.path), media_type=f.content_type,
                                 headers={"Content-Length": str(f.size)})
    return FileResponse(f.path, media_type=f.content_type)


async def _slow(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(SLOW_CHUNK):
            yield chunk
            await asyncio.sleep(SLOW_DELAY_S)


class _Truncated(Response):
    """Announces the whole file, sends half of it, then drops the connection."""

    def __init__(self, path: Path, media_type: str) -> None:
        super().__init__(status_code=200)
        self.path, self.kind = path, media_type

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        data = self.path.read_bytes()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", self.kind.encode()), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data[: len(data) // 2], "more_body": True})
        raise DropConnection()


# ---------------------------------------------------------------------- platform API


def _price_row(emu: Emulator, ep_id: str) -> dict[str, Any]:
    entry = emu.prices.entry(ep_id)
    # fal's platform API sends prices as JSON numbers; clients should read them with Decimal(str(x)).
    return {"endpoint_id": ep_id, "unit_price": float(Decimal(entry.unit_price_micro(None)) / 1_000_000),
            "unit": entry.unit, "currency": "USD"}


def _endpoint_ids(request: HttpRequest) -> list[str]:
    ids = [i for v in request.query_params.getlist("endpoint_id") for i in v.split(",") if i]
    return ids


@handler()
async def models_pricing(emu: Emulator, request: HttpRequest) -> Response:
    ids = _endpoint_ids(request)
    if not 1 <= len(ids) <= 50:
        return _json({"detail": "give between 1 and 50 endpoint_id values"}, 422)
    unknown = [i for i in ids if i not in {e.id for e in catalog.ENDPOINTS}]
    if unknown:
        return _json({"detail": f"unknown endpoint_id: {', '.join(unknown)}"}, 404)
    return _json({"prices": [_price_row(emu, i) for i in ids], "next_cursor": None, "has_more": False})


@handler()
async def models_estimate(emu: Emulator, request: HttpRequest) -> Response:
    try:
        body = await _body(request)
    except BadBody as exc:
        return _json({"detail": str(exc)}, 422)
    kind, endpoints = body.get("estimate_type"), body.get("endpoints")
    if kind not in ("historical_api_price", "unit_price") or not isinstance(endpoints, dict):
        return _json({"detail": "expected estimate_type (historical_api_price|unit_price) and endpoints"}, 422)
    assert emu.queue is not None
    total = Decimal(0)
    for ep_id, q in endpoints.items():
        if ep_id not in {e.id for e in catalog.ENDPOINTS}:
            return _json({"detail": f"unknown endpoint_id: {ep_id}"}, 404)
        unit_price = Decimal(emu.prices.entry(ep_id).unit_price_micro(None)) / 1_000_000
        try:
            if kind == "unit_price":
                total += Decimal(str(q["unit_quantity"])) * unit_price
            else:
                calls = [b for b in emu.queue.ledger if b.endpoint == ep_id]
                per_call = (Decimal(sum(b.cost_micro_usd for b in calls)) / len(calls) / 1_000_000
                            if calls else unit_price)
                total += Decimal(str(q["call_quantity"])) * per_call
        except (KeyError, InvalidOperation):
            return _json({"detail": f"{ep_id}: expected unit_quantity or call_quantity"}, 422)
    return _json({"estimate_type": kind, "total_cost": float(round(total, 6)), "currency": "USD"})


@handler()
async def models_usage(emu: Emulator, request: HttpRequest) -> Response:
    key = request.headers.get("authorization", "").partition(" ")[2]
    if emu.config.admin_keys is not None and key.strip() not in emu.config.admin_keys:
        return _json({"detail": "This endpoint requires an admin API key"}, 403)
    q = request.query_params
    now = datetime.now(timezone.utc)
    try:
        start = datetime.fromisoformat(q["start"]) if "start" in q else now - timedelta(hours=24)
        end = datetime.fromisoformat(q["end"]) if "end" in q else now
    except ValueError:
        return _json({"detail": "start and end must be ISO 8601"}, 422)
    start, end = (d if d.tzinfo else d.replace(tzinfo=timezone.utc) for d in (start, end))
    timeframe = q.get("timeframe", "day")
    if timeframe not in ("minute", "hour", "day", "week", "month"):
        return _json({"detail": "timeframe must be minute, hour, day, week or month"}, 422)
    wanted = set(_endpoint_ids(request))
    assert emu.queue is not None
    buckets: dict[str, dict[tuple[str, int], list]] = {}
    for b in emu.queue.ledger:
        at = datetime.fromtimestamp(b.at, timezone.utc)
        if not start <= at < end or (wanted and b.endpoint not in wanted):
            continue
        key_ = _bucket(at, timeframe)
        row = buckets.setdefault(key_, {}).setdefault((b.endpoint, b.unit_price_micro_usd), [b.unit, Decimal(0), 0])
        row[1] += b.units
        row[2] += b.cost_micro_usd
    series = [{"bucket": k, "results": [
        {"endpoint_id": ep_id, "unit": unit, "quantity": float(qty), "unit_price": float(Decimal(price) / 1_000_000),
         "cost": float(Decimal(cost) / 1_000_000), "currency": "USD", "auth_method": "Key"}
        for (ep_id, price), (unit, qty, cost) in sorted(rows.items())]} for k, rows in sorted(buckets.items())]
    return _json({"time_series": series, "next_cursor": None, "has_more": False})


def _bucket(at: datetime, timeframe: str) -> str:
    if timeframe == "minute":
        at = at.replace(second=0, microsecond=0)
    elif timeframe == "hour":
        at = at.replace(minute=0, second=0, microsecond=0)
    elif timeframe == "week":
        at = (at - timedelta(days=at.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    elif timeframe == "month":
        at = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    else:
        at = at.replace(hour=0, minute=0, second=0, microsecond=0)
    return at.isoformat()


# ---------------------------------------------------------------------- keys and inspection


@handler(auth=False)
async def jwks(emu: Emulator, request: HttpRequest) -> Response:
    return _json(emu.signer.jwks())


@handler(auth=False)
async def inspect_requests(emu: Emulator, request: HttpRequest) -> Response:
    assert emu.queue is not None
    return _json({"requests": emu.queue.inspection(), "webhooks": emu.queue.webhook_log,
                  "faults_fired": dict(emu.faults.fired)})


@handler(auth=False)
async def health(emu: Emulator, request: HttpRequest) -> Response:
    assert emu.queue is not None
    return _json({"ok": True, "emulator": True, "concurrency": emu.config.concurrency, "speed": emu.config.speed,
                  "instant": emu.config.instant, "renders": emu.queue.renders_made,
                  "http_requests": dict(emu.http_requests), "peak_open_requests": emu.queue.peak_open,
                  "started_at": iso(request.app.state.started_at)})


class _CountRequests:
    """ASGI middleware: counts every HTTP request served, by kind, for benchmarks and tests."""

    def __init__(self, app: Any, emu: Emulator) -> None:
        self.app, self.emu = app, emu

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            kind = ("download" if path.startswith("/files/") and scope["method"] in ("GET", "HEAD")
                    else "inspection" if path.startswith("/_emulator/") else "api")
            self.emu.http_requests[kind] = self.emu.http_requests.get(kind, 0) + 1
        await self.app(scope, receive, send)


def create_app(config: EmulatorConfig) -> Starlette:
    emu = Emulator(config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        emu.queue = Queue(config, emu.prices, emu.store, emu.faults, emu.signer, emu.root / "work")
        await emu.queue.start()
        try:
            yield
        finally:
            await emu.queue.stop()

    routes = [
        Route("/_emulator/requests", inspect_requests, methods=["GET"]),
        Route("/_emulator/health", health, methods=["GET"]),
        Route("/.well-known/jwks.json", jwks, methods=["GET"]),
        Route("/storage/auth/token", storage_token, methods=["POST"]),
        Route("/storage/upload/initiate", storage_initiate, methods=["POST"]),
        Route("/storage/upload/target/{token}", storage_put, methods=["PUT"]),
        Route("/files/upload", cdn_upload, methods=["POST"]),
        Route("/files/upload/multipart", cdn_multipart_start, methods=["POST"]),
        Route("/files/{fid}/{name}", cdn_file, methods=["GET", "HEAD"]),
        Route("/files/{fid}/{name}/{rest:path}", cdn_file, methods=["PUT", "POST"]),
        Route("/v1/models/pricing", models_pricing, methods=["GET"]),
        Route("/v1/models/pricing/estimate", models_estimate, methods=["POST"]),
        Route("/v1/models/usage", models_usage, methods=["GET"]),
        Route("/{path:path}", queue_route, methods=["GET", "POST", "PUT"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(_CountRequests, emu=emu)
    app.state.emu = emu
    app.state.started_at = time.time()
    return app
