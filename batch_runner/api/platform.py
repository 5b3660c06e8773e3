"""fal's Platform API request history and billing events as typed records, every page followed."""

# Works against https://api.fal.ai/v1 (or an emulator's `/v1`). Sources: fal's OpenAPI for
# `GET /models/requests/by-endpoint` (https://fal.ai/docs/platform-apis/v1/models/requests/by-endpoint)
# and `GET /models/billing-events` (https://fal.ai/docs/platform-apis/v1/models/billing-events),
# as shown on those pages (mirrored in tryAGI/Fal `src/libs/Fal/openapi.json`, commit badf521).

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from ..errors import RemoteError
from .transport import Transport

REQUESTS_PAGE = 100  # by-endpoint: "limit defaults to 50, max 100"
BILLING_PAGE = 1000  # billing-events: limit ≥ 1, "Limited to 10000 records per page"
NANO_PER_MICRO = Decimal(1000)
MICRO_PER_USD = Decimal(1_000_000)


@dataclass(frozen=True)
class FalRequestRecord:
    """One request as fal lists it; the times and status are None until the request gets there."""

    request_id: str
    endpoint_id: str
    sent_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    status_code: int | None
    json_input: dict[str, Any] | None

    @classmethod
    def from_item(cls, item: Any, where: str) -> FalRequestRecord:
        """Parse one `items[]` entry; RemoteError names the field when it is malformed."""
        item = _object(item, where)
        status = item.get("status_code")
        if status is not None and (isinstance(status, bool) or not isinstance(status, int)):
            raise RemoteError(f"{where}: status_code: expected an integer or null, got {status!r}")
        json_input = item.get("json_input")  # absent without expand=payloads; null when not stored
        if json_input is not None and not isinstance(json_input, dict):
            raise RemoteError(f"{where}: json_input: expected an object or null, got {type(json_input).__name__}")
        return cls(
            _text(item, "request_id", where),
            _text(item, "endpoint_id", where),
            _time(item, "sent_at", where),
            _time(item, "started_at", where),
            _time(item, "ended_at", where),
            status,
            json_input,
        )


@dataclass(frozen=True)
class BillingEvent:
    """One billed request. Money comes from fal's JSON numbers read as Decimal(str(x)), never float."""

    request_id: str
    endpoint_id: str
    timestamp: datetime
    output_units: Decimal | None  # the schema allows null ("Custom billing units for this request")
    unit_price: Decimal | None  # null allowed too: "Unit price for this request"
    percent_discount: Decimal | None  # "e.g., 10 = 10% discount"
    cost_micro_usd: int

    @classmethod
    def from_item(cls, item: Any, where: str) -> BillingEvent:
        """Parse one `billing_events[]` entry; RemoteError names the field when it is malformed."""
        item = _object(item, where)
        timestamp = _time(item, "timestamp", where)
        if timestamp is None:
            raise RemoteError(f"{where}: timestamp: missing")
        units, price = _decimal(item, "output_units", where), _decimal(item, "unit_price", where)
        discount = _decimal(item, "percent_discount", where)
        return cls(
            _text(item, "request_id", where),
            _text(item, "endpoint_id", where),
            timestamp,
            units,
            price,
            discount,
            _cost_micro(item, units, price, discount, where),
        )


def _cost_micro(
    item: dict[str, Any], units: Decimal | None, price: Decimal | None, discount: Decimal | None, where: str
) -> int:
    """The charge in micro-USD, rounded half-up: cost_estimate_nano_usd ("Amount charged after
    discounts in nano USD"), else cost_total (the same charge in USD), else
    output_units × unit_price × (1 − percent_discount/100)."""
    nano = _decimal(item, "cost_estimate_nano_usd", where)
    if nano is not None:
        micro = nano / NANO_PER_MICRO
    elif (total := _decimal(item, "cost_total", where)) is not None:
        micro = total * MICRO_PER_USD
    elif units is not None and price is not None:
        micro = units * price * (1 - (discount or Decimal(0)) / 100) * MICRO_PER_USD
    else:
        raise RemoteError(
            f"{where}: cost_estimate_nano_usd: missing, and no cost_total or "
            "output_units × unit_price to compute the charge from"
        )
    return int(micro.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def list_requests(
    transport: Transport,
    api_base: str,
    endpoint_id: str,
    start: datetime,
    end: datetime,
    *,
    page_size: int = REQUESTS_PAGE,
) -> list[FalRequestRecord]:
    """Every request fal lists for `endpoint_id` in [start, end), with its input (expand=payloads).

    fal pages by page number, so a request finishing while the pages are read can shift a row
    from one page to the next: a row seen twice is kept once.
    """
    params = {
        "endpoint_id": endpoint_id,
        "start": utc_iso(start),
        "end": utc_iso(end),
        "expand": "payloads",
        "limit": page_size,
    }
    url, what = f"{api_base.rstrip('/')}/models/requests/by-endpoint", f"fal request list of {endpoint_id}"
    records: dict[str, FalRequestRecord] = {}
    for i, item in enumerate(_items(transport, url, what, params, "items")):
        record = FalRequestRecord.from_item(item, f"{what}: item {i}")
        records.setdefault(record.request_id, record)
    return list(records.values())


def billing_events(
    transport: Transport,
    api_base: str,
    start: datetime,
    end: datetime,
    endpoint_ids: list[str] | None,
    *,
    page_size: int = BILLING_PAGE,
) -> list[BillingEvent]:
    """Every billing event in [start, end), optionally for some endpoints only (needs an admin key).

    fal caps the range at 90 days per call and takes 1-50 endpoint IDs.
    """
    params: dict[str, Any] = {"start": utc_iso(start), "end": utc_iso(end), "limit": page_size}
    if endpoint_ids:
        params["endpoint_id"] = list(endpoint_ids)  # repeated: ?endpoint_id=a&endpoint_id=b
    url, what = f"{api_base.rstrip('/')}/models/billing-events", "fal billing events"
    events: dict[BillingEvent, None] = {}  # an event seen again on a shifted page is kept once
    for i, item in enumerate(_items(transport, url, what, params, "billing_events")):
        events.setdefault(BillingEvent.from_item(item, f"{what}: item {i}"))
    return list(events)


def utc_iso(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z, as the docs' examples ('2025-01-01T00:00:00Z'); naive is refused."""
    if moment.tzinfo is None:
        raise ValueError(f"{moment!r} has no timezone: pass an aware datetime")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _items(transport: Transport, url: str, what: str, params: dict[str, Any], key: str) -> Iterator[Any]:
    """Each item of each page: follow next_cursor while has_more, with the same filters."""
    cursor: str | None = None
    seen: set[str] = set()
    while True:
        page = _page(transport, url, what, params if cursor is None else {**params, "cursor": cursor}, key)
        yield from page[key]
        cursor = page.get("next_cursor")
        if not page.get("has_more") or not cursor:
            return
        if not isinstance(cursor, str) or cursor in seen:
            raise RemoteError(f"{what}: next_cursor {cursor!r} repeats or is not a string; stopped paging")
        seen.add(cursor)


def _page(transport: Transport, url: str, what: str, params: dict[str, Any], key: str) -> dict[str, Any]:
    resp = transport.read("GET", url, what, params=params)
    try:
        body = resp.json()
    except ValueError:
        raise RemoteError(f"{what}: the answer is not JSON: {resp.text[:200]!r}") from None
    if not isinstance(body, dict) or not isinstance(body.get(key), list):
        raise RemoteError(f"{what}: {key}: expected a list in the answer, got {str(body)[:200]!r}")
    return body


def _object(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise RemoteError(f"{where}: expected an object, got {type(item).__name__}")
    return item


def _text(item: dict[str, Any], field: str, where: str) -> str:
    value = item.get(field)
    if not isinstance(value, str) or not value:
        raise RemoteError(f"{where}: {field}: expected a non-empty string, got {value!r}")
    return value


def _time(item: dict[str, Any], field: str, where: str) -> datetime | None:
    """An ISO 8601 timestamp (fal writes UTC, e.g. '2025-01-01T00:00:05Z'), or None when absent/null."""
    value = item.get(field)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise RemoteError(f"{where}: {field}: expected an ISO 8601 timestamp, got {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _decimal(item: dict[str, Any], field: str, where: str) -> Decimal | None:
    """A JSON number as an exact Decimal (via its shortest repr), or None when absent/null."""
    value = item.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RemoteError(f"{where}: {field}: expected a number, got {value!r}")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise RemoteError(f"{where}: {field}: expected a number, got {value!r}") from None
    if not number.is_finite():
        raise RemoteError(f"{where}: {field}: expected a finite number, got {value!r}")
    return number
