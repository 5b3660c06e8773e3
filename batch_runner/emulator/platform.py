"""fal's Platform API (https://api.fal.ai/v1, served under /v1): pricing, usage, request listing, billing events."""

# Source of the shapes, unless a comment says otherwise: fal's OpenAPI for the Platform APIs, shown
# on https://fal.ai/docs/platform-apis/v1/models/… (the `.md` pages embed it) and mirrored in
# tryAGI/Fal `src/libs/Fal/openapi.json` (commit badf521, 2026-08-21). fal sends money as JSON
# numbers; clients must read them with Decimal(str(x)), never as floats.

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from starlette.datastructures import QueryParams
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response

from .. import catalog
from .request import COMPLETED, Billed, Request
from .web import BadBodyError, Emulator, EndpointFn, RouteFn, handler, json_answer, read_body

T = TypeVar("T")
DAY = timedelta(days=1)
REQUESTS_LIMIT_MAX = 100  # by-endpoint: "limit defaults to 50, max 100"
REQUESTS_LIMIT_DEFAULT = 50
BILLING_LIMIT_MAX = 10_000  # billing-events: "Limited to 10000 records per page"
BILLING_LIMIT_DEFAULT = 50  # undocumented default: the docs' example value
BILLING_SPAN_MAX = timedelta(days=90)  # billing-events: "Date range capped at 90 days per request"
REQUEST_ID_LOOKBACK = timedelta(days=90)  # by-endpoint: start defaults to 90 days back when request_id is given
MAX_IDS = 50  # endpoint_id and request_id filters take 1-50 values
# by-endpoint `status` filter → HTTP status classes, as fal's analytics route defines them
# ("success_count: 2xx, user_error_count: 4xx, error_count: 5xx",
# https://fal.ai/docs/platform-apis/v1/models/analytics).
STATUS_CLASSES = {"success": range(200, 300), "user_error": range(400, 500), "error": range(500, 600)}


class BadQueryError(Exception):
    """A query parameter fal would refuse with 400 validation_error."""


def platform_error(status: int, kind: str, message: str) -> JSONResponse:
    """fal's "Standard error response format" of every /v1/models route: {"error": {"type", "message"}};
    type ∈ authorization_error, validation_error, not_found, rate_limited, server_error."""
    return json_answer({"error": {"type": kind, "message": message}}, status)


def platform_route(*, admin: bool) -> Callable[[RouteFn], EndpointFn]:
    """Key checks with fal's platform error bodies: 401 without a key; 403 for a non-admin key on an
    admin route (OpenAPI security `adminApiKey`); 400 for a bad query parameter."""

    def wrap(func: RouteFn) -> EndpointFn:
        async def endpoint(request: HttpRequest) -> Response:
            emu: Emulator = request.app.state.emu
            if not emu.authorized(request):
                # wording seen from api.fal.ai (issue luminarylane/fal-mcp-server#113)
                return platform_error(401, "authorization_error", "Invalid API key or malformed Authorization header")
            if admin and not emu.is_admin(request):
                return platform_error(403, "authorization_error", "Access denied")  # the OpenAPI's 403 example
            try:
                return await func(emu, request)
            except BadQueryError as exc:
                return platform_error(400, "validation_error", str(exc))

        endpoint.__name__ = func.__name__
        return endpoint

    return wrap


# ---------------------------------------------------------------------- query parameters


def _ids(q: QueryParams, name: str) -> list[str]:
    """A list parameter: repeated (`?x=a&x=b`) or comma-separated (`?x=a,b`), as the docs allow."""
    return [i.strip() for v in q.getlist(name) for i in v.split(",") if i.strip()]


def _when(q: QueryParams, name: str, default: datetime) -> datetime:
    """ISO 8601 date-time or date ('2025-01-01T00:00:00Z' or '2025-01-01'); naive means UTC."""
    text = q.get(name)
    if text is None:
        return default
    try:
        value = datetime.fromisoformat(text)  # a bare date is midnight
    except ValueError:
        raise BadQueryError(f"{name}: expected an ISO 8601 date or date-time, got {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _window(q: QueryParams, lookback: timedelta) -> tuple[float, float]:
    """[start, end) as POSIX seconds; start defaults to `lookback` ago, end to now (end is exclusive)."""
    now = datetime.now(UTC)
    start, end = _when(q, "start", now - lookback), _when(q, "end", now)
    if start > end:
        raise BadQueryError("start must not be after end")
    return start.timestamp(), end.timestamp()


def _limit(q: QueryParams, default: int, maximum: int) -> int:
    text = q.get("limit")
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= maximum:
        raise BadQueryError(f"limit must be an integer from 1 to {maximum}, got {text!r}")
    return int(text)


def _page(q: QueryParams) -> int:
    """The cursor encodes a page number in base64 ("Pagination cursor encoding the page number",
    example "Mg==" = page 2); no cursor is page 1."""
    text = q.get("cursor")
    if text is None:
        return 1
    try:
        page = int(base64.b64decode(text, validate=True).decode())
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadQueryError(f"cursor: not a cursor from this API: {text!r}") from None
    if page < 1:
        raise BadQueryError(f"cursor: not a cursor from this API: {text!r}")
    return page


def _paged(rows: Sequence[T], page: int, limit: int) -> tuple[Sequence[T], str | None, bool]:
    """One page, the next cursor (null on the last page) and has_more ("derived from next_cursor")."""
    more = page * limit < len(rows)
    cursor = base64.b64encode(str(page + 1).encode()).decode() if more else None
    return rows[(page - 1) * limit : page * limit], cursor, more


def _utc(ts: float | None) -> str | None:
    """A timestamp as the docs' examples write them: '2025-01-15T10:30:45Z' (with microseconds here)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------------- requests by endpoint


@platform_route(admin=False)  # "Authentication: Requires API key (user or enterprise)"
async def requests_by_endpoint(emu: Emulator, request: HttpRequest) -> Response:
    """GET /v1/models/requests/by-endpoint (https://fal.ai/docs/platform-apis/v1/models/requests/by-endpoint).

    Lists every request the queue accepted, finished or not, including those whose submit answer
    was lost; refused submits never became requests and are not listed.
    """
    q = request.query_params
    ids = _ids(q, "endpoint_id")
    if not 1 <= len(ids) <= MAX_IDS:
        raise BadQueryError("endpoint_id is required: give 1 to 50 endpoint IDs")
    rid = q.get("request_id")
    start, end = _window(q, REQUEST_ID_LOOKBACK if rid else DAY)
    status = q.get("status")
    if status is not None and status not in STATUS_CLASSES:
        raise BadQueryError(f"status must be one of success, error, user_error, got {status!r}")
    sort_by = q.get("sort_by", "ended_at")
    if sort_by not in ("ended_at", "duration"):
        raise BadQueryError(f"sort_by must be ended_at or duration, got {sort_by!r}")
    limit, page = _limit(q, REQUESTS_LIMIT_DEFAULT, REQUESTS_LIMIT_MAX), _page(q)
    payloads = "payloads" in _ids(q, "expand")
    assert emu.queue is not None
    # Which timestamp start/end filter on is undocumented; sent_at (when fal received the
    # request) is the one every request has, so a request still running is found too.
    rows = [
        r
        for r in emu.queue.requests.values()
        if r.endpoint.id in ids
        and start <= r.received_at < end
        and rid in (None, r.id)
        and (status is None or (r.state == COMPLETED and r.result_status in STATUS_CLASSES[status]))
    ]
    # The sort direction is undocumented: newest (or longest) first, unfinished requests first,
    # as fal's request search is documented to order ("newest first").
    if sort_by == "duration":
        rows.sort(key=lambda r: (_duration(r) is not None, _duration(r) or 0.0, r.received_at, r.id), reverse=True)
    else:
        rows.sort(key=lambda r: (r.state != COMPLETED, r.completed_at or 0.0, r.received_at, r.id), reverse=True)
    shown, cursor, more = _paged(rows, page, limit)
    return json_answer({"items": [_request_item(r, payloads) for r in shown], "next_cursor": cursor, "has_more": more})


def _duration(req: Request) -> float | None:
    """ "Total request duration in seconds": execution time, started → ended (fal's analytics call the
    queue wait prepare_duration and the execution duration)."""
    if req.state != COMPLETED or req.started_at is None or req.completed_at is None:
        return None
    return round(req.completed_at - req.started_at, 3)


def _request_item(req: Request, payloads: bool) -> dict[str, Any]:
    """One item. request_id, endpoint_id, started_at and sent_at are required by the schema, but fal
    does not document what it shows before a request starts or ends: started_at, ended_at,
    status_code and duration are null until then (status_code is the result's HTTP status)."""
    done = req.state == COMPLETED
    item: dict[str, Any] = {
        "request_id": req.id,
        "endpoint_id": req.endpoint.id,
        "started_at": _utc(req.started_at),
        "sent_at": _utc(req.received_at),
        "ended_at": _utc(req.completed_at) if done else None,
        "status_code": req.result_status if done else None,
        "duration": _duration(req),
    }
    if payloads:  # "Include payloads by adding expand=payloads"
        item["json_input"] = req.input
        item["json_output"] = req.result_body if done else None
    return item


# ---------------------------------------------------------------------- billing events


@platform_route(admin=True)  # OpenAPI security: adminApiKey
async def billing_events(emu: Emulator, request: HttpRequest) -> Response:
    """GET /v1/models/billing-events (https://fal.ai/docs/platform-apis/v1/models/billing-events).

    One event per billed request (only successful outputs are billed), newest first as in the
    docs' example. api_key_id, login_username and expand are accepted and not applied: the
    emulator does not track keys per request.
    """
    q = request.query_params
    start, end = _window(q, DAY)
    if end - start > BILLING_SPAN_MAX.total_seconds():
        raise BadQueryError("the date range is capped at 90 days per request")
    ids, rids = _ids(q, "endpoint_id"), _ids(q, "request_id")
    if len(ids) > MAX_IDS or len(rids) > MAX_IDS:
        raise BadQueryError("endpoint_id and request_id take at most 50 values each")
    limit, page = _limit(q, BILLING_LIMIT_DEFAULT, BILLING_LIMIT_MAX), _page(q)
    assert emu.queue is not None
    rows = [
        b
        for b in emu.queue.ledger
        if start <= b.at < end and (not ids or b.endpoint in ids) and (not rids or b.request_id in rids)
    ]
    rows.sort(key=lambda b: (b.at, b.request_id), reverse=True)
    shown, cursor, more = _paged(rows, page, limit)
    # The docs' example cursor encodes a timestamp, the parameter's description a page number;
    # cursors are opaque to clients, and page numbers are used here.
    return json_answer({"billing_events": [_billing_event(b) for b in shown], "next_cursor": cursor, "has_more": more})


def _billing_event(b: Billed) -> dict[str, Any]:
    """Every field the schema requires. No discounts here: percent_discount is null, cost_discount 0;
    cost_subtotal = output_units × unit_price; cost_estimate_nano_usd is cost_total in nano-USD.
    The money fields are JSON numbers, as fal sends them: clients read them with Decimal(str(x))."""
    price = Decimal(b.unit_price_micro_usd) / 1_000_000
    cost = Decimal(b.cost_micro_usd) / 1_000_000
    return {
        "request_id": b.request_id,
        "endpoint_id": b.endpoint,
        "timestamp": _utc(b.at),
        "output_units": float(b.units),
        "unit_price": float(price),
        "percent_discount": None,
        "cost_subtotal": float(cost),
        "cost_discount": 0,
        "cost_total": float(cost),
        "cost_estimate_nano_usd": b.cost_micro_usd * 1000,
    }


# ---------------------------------------------------------------------- pricing, estimate, usage


def _price_row(emu: Emulator, ep_id: str) -> dict[str, Any]:
    entry = emu.prices.entry(ep_id)
    return {
        "endpoint_id": ep_id,
        "unit_price": float(Decimal(entry.unit_price_micro(None)) / 1_000_000),
        "unit": emu.config.price_units.get(ep_id, entry.unit),
        "currency": "USD",
    }


@handler()
async def models_pricing(emu: Emulator, request: HttpRequest) -> Response:
    ids = _ids(request.query_params, "endpoint_id")
    if not 1 <= len(ids) <= MAX_IDS:
        return json_answer({"detail": "give between 1 and 50 endpoint_id values"}, 422)
    unknown = [i for i in ids if i not in {e.id for e in catalog.ENDPOINTS}]
    if unknown:
        return json_answer({"detail": f"unknown endpoint_id: {', '.join(unknown)}"}, 404)
    return json_answer({"prices": [_price_row(emu, i) for i in ids], "next_cursor": None, "has_more": False})


@handler()
async def models_estimate(emu: Emulator, request: HttpRequest) -> Response:
    try:
        body = await read_body(request)
    except BadBodyError as exc:
        return json_answer({"detail": str(exc)}, 422)
    kind, endpoints = body.get("estimate_type"), body.get("endpoints")
    if kind not in ("historical_api_price", "unit_price") or not isinstance(endpoints, dict):
        return json_answer({"detail": "expected estimate_type (historical_api_price|unit_price) and endpoints"}, 422)
    assert emu.queue is not None
    total = Decimal(0)
    for ep_id, q in endpoints.items():
        if ep_id not in {e.id for e in catalog.ENDPOINTS}:
            return json_answer({"detail": f"unknown endpoint_id: {ep_id}"}, 404)
        unit_price = Decimal(emu.prices.entry(ep_id).unit_price_micro(None)) / 1_000_000
        try:
            if kind == "unit_price":
                total += Decimal(str(q["unit_quantity"])) * unit_price
            else:
                calls = [b for b in emu.queue.ledger if b.endpoint == ep_id]
                per_call = (
                    Decimal(sum(b.cost_micro_usd for b in calls)) / len(calls) / 1_000_000 if calls else unit_price
                )
                total += Decimal(str(q["call_quantity"])) * per_call
        except (KeyError, InvalidOperation):
            return json_answer({"detail": f"{ep_id}: expected unit_quantity or call_quantity"}, 422)
    return json_answer({"estimate_type": kind, "total_cost": float(round(total, 6)), "currency": "USD"})


# Usage (https://docs.fal.ai/platform-apis/v1/models/usage, and its OpenAPI in
# https://fal.ai/docs/platform-apis/v1/models/usage.md). Strict where fal's two renderings differ:
# docs.fal.ai says endpoint_id "Must provide at least 1 endpoint ID (1-50 models)" and expand
# "At least one of 'time_series' or 'summary' is required"; the .md OpenAPI marks endpoint_id
# optional and gives expand a default of time_series. A client that always sends both works
# against either, so the emulator refuses what the stricter page refuses.
TIMEFRAMES = ("minute", "hour", "day", "week", "month")
USAGE_EXPANDS = ("time_series", "summary", "auth_method")


def _timeframe(q: QueryParams, start: datetime, end: datetime) -> str:
    """The bucket size: given, or "auto-detected from date range if not specified. Auto-detection
    uses: minute (<2h), hour (<2d), day (<64d), week (<183d), month (>=183d)"."""
    given = q.get("timeframe")
    if given is not None:
        if given not in TIMEFRAMES:
            raise BadQueryError(f"timeframe must be one of {', '.join(TIMEFRAMES)}, got {given!r}")
        return given
    span = end - start
    for limit, name in (
        (timedelta(hours=2), "minute"),
        (timedelta(days=2), "hour"),
        (timedelta(days=64), "day"),
        (timedelta(days=183), "week"),
    ):
        if span < limit:
            return name
    return "month"


def _zone(q: QueryParams) -> tzinfo:
    """timezone (default UTC): "controls how dates are bucketed"; bucket stamps carry its offset."""
    name = q.get("timezone", "UTC")
    try:
        return UTC if name.upper() == "UTC" else ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadQueryError(f"timezone: unknown time zone {name!r}") from None


def _bounded(q: QueryParams) -> bool:
    """bound_to_timeframe: 'true' (the default) or 'false'."""
    text = q.get("bound_to_timeframe", "true")
    if text not in ("true", "false"):
        raise BadQueryError(f"bound_to_timeframe must be 'true' or 'false', got {text!r}")
    return text == "true"


@platform_route(admin=True)  # "Admin API key must be prefixed with \"Key \"" (OpenAPI security adminApiKey)
async def models_usage(emu: Emulator, request: HttpRequest) -> Response:
    """GET /v1/models/usage: billed usage per bucket and endpoint (time_series) and/or per endpoint
    over the whole window (summary).

    bound_to_timeframe "Defaults to true. When true, dates are aligned to the start of the
    timeframe period (e.g., start of day) and end is made exclusive (e.g., start of next day).
    When false, uses exact dates provided." The emulator reads "made exclusive" the inclusive way:
    end moves to the start of the period after the one that holds it.
    """
    q = request.query_params
    ids = _ids(q, "endpoint_id")
    if not 1 <= len(ids) <= MAX_IDS:
        raise BadQueryError("endpoint_id is required: must provide at least 1 endpoint ID (1-50 models)")
    expand = _ids(q, "expand")
    unknown = [e for e in expand if e not in USAGE_EXPANDS]
    if unknown:
        raise BadQueryError(f"expand: unknown value {unknown[0]!r}; use time_series, summary or auth_method")
    if not {"time_series", "summary"} & set(expand):
        raise BadQueryError("expand: at least one of 'time_series' or 'summary' is required")
    zone, bounded = _zone(q), _bounded(q)
    now = datetime.now(UTC)
    start, end = _when(q, "start", now - DAY), _when(q, "end", now)
    if start > end:
        raise BadQueryError("start must not be after end")
    timeframe = _timeframe(q, start, end)
    if bounded:
        start = _floor(start.astimezone(zone), timeframe)
        end = _next(_floor(end.astimezone(zone), timeframe), timeframe)
    labels = "auth_method" in expand
    assert emu.queue is not None
    buckets: dict[str, dict[tuple[str, int], list[Any]]] = {}
    totals: dict[tuple[str, int], list[Any]] = {}
    for b in emu.queue.ledger:
        at = datetime.fromtimestamp(b.at, UTC)
        if not start <= at < end or b.endpoint not in ids:
            continue
        for rows in (buckets.setdefault(_floor(at.astimezone(zone), timeframe).isoformat(), {}), totals):
            row = rows.setdefault((b.endpoint, b.unit_price_micro_usd), [b.unit, Decimal(0), 0])
            row[1] += b.units
            row[2] += b.cost_micro_usd
    body: dict[str, Any] = {}
    if "time_series" in expand:
        body["time_series"] = [
            {"bucket": k, "results": _usage_rows(emu, rows, labels)} for k, rows in sorted(buckets.items())
        ]
    if "summary" in expand:
        body["summary"] = _usage_rows(emu, totals, labels)
    return json_answer({**body, "next_cursor": None, "has_more": False})


def _usage_rows(emu: Emulator, rows: dict[tuple[str, int], list[Any]], labels: bool) -> list[dict[str, Any]]:
    """Line items; auth_method "Only populated when 'auth_method' is included in expand"."""
    return [
        {
            "endpoint_id": ep_id,
            "unit": emu.config.price_units.get(ep_id, unit),
            "quantity": float(qty),
            "unit_price": float(Decimal(price) / 1_000_000),
            "cost": float(Decimal(cost) / 1_000_000),
            "currency": "USD",
            **({"auth_method": "Key 1"} if labels else {}),
        }
        for (ep_id, price), (unit, qty, cost) in sorted(rows.items())
    ]


def _floor(at: datetime, timeframe: str) -> datetime:
    """The start of the period that holds `at`, in `at`'s own time zone (weeks start on Monday)."""
    if timeframe == "minute":
        return at.replace(second=0, microsecond=0)
    if timeframe == "hour":
        return at.replace(minute=0, second=0, microsecond=0)
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    if timeframe == "week":
        return day - timedelta(days=day.weekday())
    if timeframe == "month":
        return day.replace(day=1)
    return day


def _next(at: datetime, timeframe: str) -> datetime:
    """The start of the period after the one that starts at `at`."""
    if timeframe == "month":
        return at.replace(year=at.year + at.month // 12, month=at.month % 12 + 1)
    step = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": DAY, "week": timedelta(days=7)}
    return (at + step[timeframe]).replace(tzinfo=at.tzinfo)
