"""The emulator's own routes under /_emulator (no key): what happened, health, and the test controls."""

# GET    /_emulator/requests  every submission, webhook attempt and fault fired
# GET    /_emulator/health    settings, counters, holds and outages
# GET    /_emulator/holds     the submit and download holds: seconds, remaining, held_now, held_total
# POST   /_emulator/holds     re-arm holds: {"submit_s", "submit_count", "download_s", "download_count"}
# DELETE /_emulator/holds     disarm both holds and end every hold under way
# GET    /_emulator/outage    outage windows and how many answers they gave
# POST   /_emulator/outage    start an outage now: {"seconds": float (real), "submits": bool}
# DELETE /_emulator/outage    end the outage under way
# The JWKS of the webhook key (/.well-known/jwks.json) is served from here too.

from __future__ import annotations

import math

from starlette.requests import Request as HttpRequest
from starlette.responses import Response

from .request import iso
from .web import BadBodyError, Emulator, handler, json_answer, read_body


@handler(auth=False)
async def jwks(emu: Emulator, request: HttpRequest) -> Response:
    return json_answer(emu.signer.jwks())


@handler(auth=False)
async def inspect_requests(emu: Emulator, request: HttpRequest) -> Response:
    assert emu.queue is not None
    return json_answer(
        {"requests": emu.queue.inspection(), "webhooks": emu.queue.webhook_log, "faults_fired": dict(emu.faults.fired)}
    )


@handler(auth=False)
async def health(emu: Emulator, request: HttpRequest) -> Response:
    assert emu.queue is not None
    return json_answer(
        {
            "ok": True,
            "emulator": True,
            "concurrency": emu.config.concurrency,
            "speed": emu.config.speed,
            "instant": emu.config.instant,
            "renders": emu.queue.producer.renders_made,
            "probes": emu.queue.producer.probes_made,
            "http_requests": dict(emu.http_requests),
            "peak_open_requests": emu.queue.peak_open,
            "started_at": iso(request.app.state.started_at),
            "holds": emu.holds.view(),
            "outage": emu.outage.view(),
            "billable_units": emu.config.send_billable_units,
        }
    )


@handler(auth=False)
async def holds(emu: Emulator, request: HttpRequest) -> Response:
    if request.method == "DELETE":
        emu.holds.disarm()
    elif request.method == "POST":
        try:
            emu.holds.arm(await read_body(request))
        except (BadBodyError, ValueError) as exc:
            return json_answer({"detail": str(exc)}, 422)
    return json_answer(emu.holds.view())


@handler(auth=False)
async def outage(emu: Emulator, request: HttpRequest) -> Response:
    if request.method == "DELETE":
        emu.outage.end()
    elif request.method == "POST":
        try:
            body = await read_body(request)
        except BadBodyError as exc:
            return json_answer({"detail": str(exc)}, 422)
        seconds, submits = body.get("seconds"), body.get("submits", False)
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, (int, float))
            or not math.isfinite(seconds)
            or seconds <= 0
            or not isinstance(submits, bool)
        ):
            return json_answer({"detail": 'expected {"seconds": a number > 0, "submits": true|false}'}, 422)
        emu.outage.start(float(seconds), submits)
    return json_answer(emu.outage.view())
