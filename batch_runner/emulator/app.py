"""The emulator's HTTP app: fal's queue routes, and one Starlette app serving every fal host's paths."""

# Paths never collide across fal's hosts, so one port serves them all: queue (`/{endpoint_id}`,
# `…/requests/{id}[/status[/stream]|/cancel]`) here, REST storage (`/storage/…`) and CDN
# (`/files/…`) in cdn.py, platform (`/v1/models/…`) in platform.py, the JWKS
# (`/.well-known/jwks.json`) and `/_emulator/…` inspection and test controls in inspection.py.

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from .. import catalog
from . import cdn, control, inspection, platform
from .config import EmulatorConfig
from .queue import Queue
from .request import COMPLETED, Request, canonical_hash
from .web import BadBodyError, Dropped, Emulator, json_answer, nginx, read_body, unauthorized

KEEPALIVE_COMMENT = b": keep-alive\n\n"  # an SSE comment (https://fal.ai/docs/inference-api/queue/status-stream)

# fal's balance lock (reference §7, issues fal-ai/fal#1112, #1147)
LOCKED = "User is locked. Reason: Exhausted balance. Top up your balance at fal.ai/dashboard/billing."


# ---------------------------------------------------------------------- queue


def _find_request(emu: Emulator, prefix: str, rid: str) -> Request | None:
    """The request, if `prefix` is its owner/alias. Only that form is served: the path takes the
    owner and "The model app name … Do not add the endpoint path" (https://fal.ai/docs/inference-api/queue/cancel,
    the same parameters in https://fal.ai/docs/api-reference/inference-api/openapi/queue.json), and
    fal's clients build them so (fal-client `SyncRequestHandle.from_request_id`; fal-js queue.ts
    `${owner}/${alias}`). The full endpoint path there is a 404, as it is not documented."""
    assert emu.queue is not None
    req = emu.queue.requests.get(rid)
    if req is None:
        return None
    return req if prefix == "/".join(req.endpoint.id.split("/")[:2]) else None


async def queue_route(request: HttpRequest) -> Response:
    emu: Emulator = request.app.state.emu
    path = request.url.path.strip("/")
    parts = path.split("/")
    if "requests" in parts:
        i = len(parts) - 1 - parts[::-1].index("requests")
        prefix, rest = "/".join(parts[:i]), parts[i + 1 :]
        if not rest:
            return json_answer({"detail": "Not found"}, 404)
        return _request_route(emu, request, prefix, rest[0], "/".join(rest[1:]))
    if request.method != "POST":
        return json_answer({"detail": "Method not allowed"}, 405)
    outage = emu.outage_answer(submit=True)
    if outage is not None:
        return outage
    return await _submit(emu, path, request)


def _request_route(emu: Emulator, request: HttpRequest, prefix: str, rid: str, tail: str) -> Response:
    """status, status/stream, result and cancel of one request."""
    outage = emu.outage_answer()
    if outage is not None:
        return outage
    if not emu.authorized(request):
        return unauthorized()
    fault = emu.call_fault(rid, request.method, tail)
    if fault is not None:
        return fault
    req = _find_request(emu, prefix, rid)
    if request.method == "GET" and tail == "status":
        return _status(emu, req, request)
    if request.method == "GET" and tail == "status/stream":
        if emu.faults.fires("stream_unavailable", rid):
            return nginx(503)
        return _stream(emu, req, request)
    if request.method == "GET" and tail == "":
        return _result(req, emu.config.send_billable_units)
    if request.method == "PUT" and tail == "cancel":
        if req is None:
            return json_answer({"status": "NOT_FOUND"}, 404)
        assert emu.queue is not None
        code, status = emu.queue.cancel(req)
        return json_answer({"status": status}, code)
    return json_answer({"detail": "Not found"}, 404)


async def _submit(emu: Emulator, path: str, request: HttpRequest) -> Response:
    try:
        ep = catalog.endpoint(path)
    except KeyError:
        return json_answer({"detail": f"Application '{path}' not found"}, 404)
    if not emu.authorized(request):
        return unauthorized()
    try:
        payload = await read_body(request)
    except BadBodyError as exc:
        return json_answer({"detail": [{"loc": ["body"], "msg": str(exc), "type": "value_error"}]}, 422)
    assert emu.queue is not None
    input_hash = canonical_hash(ep.id, payload)
    n = emu.queue.submission_number(input_hash)
    refusal = _refusal(emu, ep, payload, input_hash, n, request)
    if refusal is not None:
        emu.queue.record_refused(ep.id, input_hash, refusal.status_code, bytes(refusal.body).decode()[:300])
        return refusal
    webhook = request.query_params.get("fal_webhook")
    req = emu.queue.submit(ep, payload, input_hash, n, webhook, emu.base_url(request), _start_timeout(request))
    # Accepted: the request exists and will run and bill. A submit hold stalls the answer here,
    # the window in which a client that dies has created a request it never heard about.
    seconds = emu.holds.submit.take()
    if seconds:
        await control.hold(emu.holds.submit, seconds, request.receive)
    if emu.faults.fires("drop_after_submit", input_hash, n):
        return Dropped()
    body = emu.queue.status_body(req, False)
    body.pop("logs", None)
    body.setdefault("queue_position", emu.queue.position(req))
    body["status"] = "IN_QUEUE"
    body["gateway_request_id"] = req.id
    return json_answer(body, 200, {"x-fal-request-id": req.id})


def _start_timeout(request: HttpRequest) -> float | None:
    """X-Fal-Request-Timeout in seconds (checked by `_refusal`), or None when not sent."""
    raw = request.headers.get("x-fal-request-timeout")
    return float(raw) if raw is not None else None


def _bad_start_timeout(request: HttpRequest) -> str | None:
    """Why the X-Fal-Request-Timeout header is malformed, if it is. fal: "Minimum > 0.1 seconds"
    (https://docs.fal.ai/documentation/model-apis/common-parameters); a malformed request is
    `bad_request`, 400, "e.g., invalid timeout header" (https://fal.ai/docs/documentation/model-apis/request-errors)."""
    raw = request.headers.get("x-fal-request-timeout")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        return f"Invalid X-Fal-Request-Timeout header: {raw[:40]!r} is not a number"
    if not math.isfinite(seconds) or seconds <= 0.1:
        return f"Invalid X-Fal-Request-Timeout header: {raw[:40]!r} must be greater than 0.1 seconds"
    return None


def _refusal(
    emu: Emulator, ep: catalog.Endpoint, payload: dict[str, Any], input_hash: str, n: int, request: HttpRequest
) -> Response | None:
    """Why this submit is not accepted, if it is not: an injected fault, a bad header or invalid input."""
    refusal = emu.call_fault("submit", input_hash, n)
    bad_timeout = _bad_start_timeout(request)
    if refusal is None and bad_timeout is not None:
        refusal = json_answer(
            {"detail": bad_timeout, "error_type": "bad_request"}, 400, {"X-Fal-Error-Type": "bad_request"}
        )
    if refusal is None and emu.faults.fires("lock", input_hash, n):
        refusal = json_answer({"detail": LOCKED}, 403)
    if refusal is None and emu.faults.fires("gateway_timeout", input_hash, n):
        refusal = json_answer(
            {"detail": "Request timed out", "error_type": "request_timeout"},
            504,
            {"X-Fal-Error-Type": "request_timeout"},
        )
    if refusal is None:
        issues = ep.validate(payload, allow_extra=True)
        if issues:
            refusal = json_answer({"detail": [i.as_detail() for i in issues]}, 422)
    return refusal


def _logs_wanted(request: HttpRequest) -> bool:
    return request.query_params.get("logs", "0").lower() in ("1", "true", "yes")


def _status(emu: Emulator, req: Request | None, request: HttpRequest) -> Response:
    if req is None:
        return json_answer({"detail": "Request not found"}, 404)
    assert emu.queue is not None
    body = emu.queue.status_body(req, _logs_wanted(request))
    return json_answer(body, 200 if req.state == COMPLETED else 202, {"x-fal-request-id": req.id})


def _stream(emu: Emulator, req: Request | None, request: HttpRequest) -> Response:
    if req is None:
        return json_answer({"detail": "Request not found"}, 404)
    assert emu.queue is not None
    queue, logs, keepalive = emu.queue, _logs_wanted(request), emu.config.keepalive_s

    async def events() -> AsyncIterator[bytes]:
        sent = 0  # log entries already sent on this stream
        while True:
            # Take the change event *before* reading the status: a change while this event is
            # being sent then sets `waiter`, instead of being missed until the next keep-alive.
            waiter = req.changed
            body = queue.status_body(req, logs)
            if isinstance(body.get("logs"), list):
                # Each streamed event carries only the entries new since the last one: fal-js
                # accumulates them itself "to match previous polling behavior" (queue.ts
                # subscribeToStatus, streaming mode), where a poll returns every entry.
                body["logs"], sent = body["logs"][sent:], len(body["logs"])
            yield f"data: {json.dumps(body)}\n\n".encode()
            if body["status"] == COMPLETED:
                return
            while True:  # one event per change; a comment line while nothing changes (config.KEEPALIVE_S)
                try:
                    await asyncio.wait_for(waiter.wait(), keepalive)
                    break
                except TimeoutError:
                    yield KEEPALIVE_COMMENT

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "x-fal-request-id": req.id}
    )


def _result(req: Request | None, send_units: bool = True) -> Response:
    if req is None:
        return json_answer({"detail": "Request not found"}, 404)
    if req.state != COMPLETED:
        return json_answer({"detail": "Request is still in progress"}, 400)
    if req.expires_at is not None and time.time() >= req.expires_at:
        return json_answer({"detail": "Request result has expired"}, 404)
    headers = {"x-fal-request-id": req.id}
    if req.billable_units is not None and send_units:
        headers["x-fal-billable-units"] = f"{req.billable_units:f}"
    if isinstance(req.result_body, dict) and isinstance(req.result_body.get("error_type"), str):
        # a request error (not a model's 422): "The X-Fal-Error-Type response header contains the
        # same value as error_type" (https://fal.ai/docs/documentation/model-apis/request-errors)
        headers["X-Fal-Error-Type"] = req.result_body["error_type"]
    if req.timed_out:  # the start deadline passed (https://docs.fal.ai/documentation/model-apis/common-parameters)
        headers["X-Fal-Request-Timeout-Type"] = "user"
    return json_answer(req.result_body, req.result_status, headers)


class _CountRequests:
    """ASGI middleware: counts every HTTP request served, by kind, for benchmarks and tests."""

    def __init__(self, app: Any, emu: Emulator) -> None:
        self.app, self.emu = app, emu

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            kind = (
                "download"
                if path.startswith("/files/") and scope["method"] in ("GET", "HEAD")
                else "inspection"
                if path.startswith("/_emulator/")
                else "api"
            )
            self.emu.http_requests[kind] = self.emu.http_requests.get(kind, 0) + 1
        await self.app(scope, receive, send)


def create_app(config: EmulatorConfig) -> Starlette:
    emu = Emulator(config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        emu.queue = Queue(config, emu.prices, emu.store, emu.faults, emu.signer, emu.root / "work")
        await emu.queue.start()
        emu.outage.schedule(time.monotonic())  # spec outages count from here
        try:
            yield
        finally:
            await emu.queue.stop()

    routes = [
        Route("/_emulator/requests", inspection.inspect_requests, methods=["GET"]),
        Route("/_emulator/health", inspection.health, methods=["GET"]),
        Route("/_emulator/holds", inspection.holds, methods=["GET", "POST", "DELETE"]),
        Route("/_emulator/outage", inspection.outage, methods=["GET", "POST", "DELETE"]),
        Route("/.well-known/jwks.json", inspection.jwks, methods=["GET"]),
        Route("/storage/auth/token", cdn.storage_token, methods=["POST"]),
        Route("/storage/upload/initiate", cdn.storage_initiate, methods=["POST"]),
        Route("/storage/upload/target/{token}", cdn.storage_put, methods=["PUT"]),
        Route("/storage/upload/initiate-multipart", cdn.storage_initiate_multipart, methods=["POST"]),
        Route("/storage/upload/multipart/{upload_id}/{part}", cdn.storage_multipart_part, methods=["PUT", "POST"]),
        Route("/files/upload", cdn.cdn_upload, methods=["POST"]),
        Route("/files/upload/multipart", cdn.cdn_multipart_start, methods=["POST"]),
        Route("/files/{fid}/{name}", cdn.cdn_file, methods=["GET", "HEAD"]),
        Route("/files/{fid}/{name}/{rest:path}", cdn.cdn_file, methods=["PUT", "POST"]),
        Route("/v1/models/pricing", platform.models_pricing, methods=["GET"]),
        Route("/v1/models/pricing/estimate", platform.models_estimate, methods=["POST"]),
        Route("/v1/models/usage", platform.models_usage, methods=["GET"]),
        Route("/v1/models/requests/by-endpoint", platform.requests_by_endpoint, methods=["GET"]),
        Route("/v1/models/billing-events", platform.billing_events, methods=["GET"]),
        Route("/{path:path}", queue_route, methods=["GET", "POST", "PUT"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(_CountRequests, emu=emu)
    app.state.emu = emu
    app.state.started_at = time.time()
    return app
