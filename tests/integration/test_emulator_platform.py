"""The emulator's Platform API request listing and billing events over real HTTP, and our client for them."""

from __future__ import annotations

import base64
import threading
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import httpx
import pytest

from batch_runner.api.platform import BillingEvent, FalRequestRecord, billing_events, list_requests, utc_iso
from batch_runner.api.transport import RetryPolicy, Transport
from batch_runner.errors import AuthError, RemoteError
from tests.conftest import EMU_KEY
from tests.integration.emu_helpers import submit, upload, wait_done

T2V = "luma/agent/ray/v3.2/text-to-video"
FLASH = "fal-ai/luma-dream-machine/ray-2-flash/reframe"
LIST = "/v1/models/requests/by-endpoint"
BILLING = "/v1/models/billing-events"


@pytest.fixture
def client_for(emulator_factory):
    """An emulator with the given settings, and an httpx client with a key for it."""
    clients = []

    def make(key: str = EMU_KEY, **settings):
        server = emulator_factory(**settings)
        client = httpx.Client(base_url=server.url, headers={"Authorization": f"Key {key}"}, timeout=60)
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()


def _listing(api: httpx.Client, endpoint: str, **params) -> dict:
    resp = api.get(LIST, params={"endpoint_id": endpoint, "expand": "payloads", **params})
    assert resp.status_code == 200, resp.text
    return resp.json()


def _done_reframe(api: httpx.Client, media) -> tuple[dict, httpx.Response]:
    body = submit(api, FLASH, {"video_url": upload(api, media["c5"]), "aspect_ratio": "9:16"})
    wait_done(api, body["status_url"])
    return body, api.get(body["response_url"])


# ---------------------------------------------------------------------- the routes


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"endpoint_id": T2V, "limit": "0"},
        {"endpoint_id": T2V, "limit": "101"},
        {"endpoint_id": T2V, "cursor": "x"},
        {"endpoint_id": T2V, "status": "failed"},
        {"endpoint_id": T2V, "start": "yesterday"},
        {"endpoint_id": T2V, "sort_by": "sent_at"},
        {"endpoint_id": T2V, "start": "2025-02-01", "end": "2025-01-01"},
    ],
)
def test_request_listing_refuses_bad_parameters_with_a_validation_error(api, params):
    resp = api.get(LIST, params=params)
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "validation_error" and resp.json()["error"]["message"]


def test_platform_routes_without_a_key_are_401_authorization_errors(emu):
    for path in (f"{LIST}?endpoint_id={T2V}", BILLING):
        resp = httpx.get(emu.url + path)
        assert resp.status_code == 401 and resp.json()["error"]["type"] == "authorization_error"


def test_billing_events_need_an_admin_key_when_admin_keys_are_set(client_for):
    user = client_for(key="user", admin_keys=frozenset({"admin"}))
    admin = httpx.Client(base_url=user.base_url, headers={"Authorization": "Key admin"})
    denied = user.get(BILLING)
    assert denied.status_code == 403 and denied.json() == {
        "error": {"type": "authorization_error", "message": "Access denied"}
    }
    assert admin.get(BILLING).json() == {"billing_events": [], "next_cursor": None, "has_more": False}
    assert user.get(LIST, params={"endpoint_id": T2V}).status_code == 200  # any API key may list requests
    admin.close()


def test_pagination_walks_every_request_once(client_for):
    api = client_for(speed=1)  # nothing finishes while the pages are read, so no row changes place
    ids = {submit(api, T2V, {"prompt": f"page {i}"})["request_id"] for i in range(7)}
    seen, cursors, cursor = [], [], None
    while True:
        page = _listing(api, T2V, limit=3, **({"cursor": cursor} if cursor else {}))
        seen += [item["request_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        assert page["has_more"] == (cursor is not None)
        if cursor is None:
            break
        cursors.append(cursor)
    assert sorted(seen) == sorted(ids) and len(seen) == 7
    assert cursors == [base64.b64encode(b"2").decode(), base64.b64encode(b"3").decode()]  # "Mg==", "Mw=="
    assert _listing(api, "fal-ai/luma-dream-machine/ray-2")["items"] == []


def test_a_dropped_submit_is_listed_with_its_input(client_for):
    api = client_for(faults="drop_after_submit=1/1")
    payload = {"prompt": "lost answer"}
    with pytest.raises(httpx.RemoteProtocolError):
        api.post(f"/{T2V}", json=payload)
    [item] = _listing(api, T2V)["items"]
    assert item["json_input"] == payload and item["endpoint_id"] == T2V
    assert set(item) == {
        "request_id",
        "endpoint_id",
        "started_at",
        "sent_at",
        "ended_at",
        "status_code",
        "duration",
        "json_input",
        "json_output",
    }
    assert datetime.fromisoformat(item["sent_at"]).tzinfo is not None


def test_unfinished_requests_have_no_status_code_and_payloads_need_expand(client_for):
    api = client_for(speed=1)  # 2 s in the queue: still IN_QUEUE when listed
    body = submit(api, T2V, {"prompt": "waiting"})
    [item] = api.get(LIST, params={"endpoint_id": T2V}).json()["items"]
    assert (item["request_id"], item["status_code"], item["ended_at"], item["duration"]) == (
        body["request_id"],
        None,
        None,
        None,
    )
    assert "json_input" not in item
    api.put(body["cancel_url"])


def test_a_completed_request_is_listed_and_billed_units_times_price(api, media):
    body, result = _done_reframe(api, media)
    [item] = _listing(api, FLASH, status="success")["items"]
    assert (item["status_code"], item["json_output"]) == (200, result.json())
    assert item["ended_at"] and item["duration"] is not None
    [event] = api.get(BILLING, params={"endpoint_id": FLASH}).json()["billing_events"]
    units, price = Decimal(str(event["output_units"])), Decimal(str(event["unit_price"]))
    assert event["request_id"] == body["request_id"] and event["percent_discount"] is None
    assert units == Decimal(result.headers["x-fal-billable-units"]) == 5
    assert units * price == Decimal(str(event["cost_total"])) == Decimal(str(event["cost_subtotal"])) == Decimal("0.3")
    assert event["cost_estimate_nano_usd"] == 300_000_000 and event["cost_discount"] == 0
    assert api.get(BILLING, params={"endpoint_id": T2V}).json()["billing_events"] == []
    assert api.get(BILLING, params={"request_id": body["request_id"]}).json()["billing_events"] == [event]


def test_failed_and_refused_requests_are_listed_but_never_billed(client_for):
    api = client_for(faults="refuse=1/1,fail=1/1")
    refused = submit(api, T2V, {"prompt": "refused"})
    failed = submit(api, T2V, {"prompt": "failed"})
    wait_done(api, refused["status_url"])
    wait_done(api, failed["status_url"])
    assert api.post(f"/{T2V}", json={"aspect_ratio": "2:1"}).status_code == 422  # never created: not listed
    listed = {i["request_id"]: i["status_code"] for i in _listing(api, T2V)["items"]}
    assert listed == {refused["request_id"]: 422, failed["request_id"]: 503}
    assert [i["request_id"] for i in _listing(api, T2V, status="user_error")["items"]] == [refused["request_id"]]
    assert [i["request_id"] for i in _listing(api, T2V, status="error")["items"]] == [failed["request_id"]]
    assert _listing(api, T2V, status="success")["items"] == []
    assert api.get(BILLING).json()["billing_events"] == []


def test_the_time_window_filters_and_accepts_dates(api):
    rid = submit(api, T2V, {"prompt": "window"})["request_id"]
    today = datetime.now(UTC).date()
    assert [i["request_id"] for i in _listing(api, T2V, start=str(today))["items"]] == [rid]
    assert _listing(api, T2V, start=str(today + timedelta(days=1)), end=str(today + timedelta(days=2)))["items"] == []
    assert _listing(api, T2V, start="2020-01-01T00:00:00Z", end="2020-01-02T00:00:00Z")["items"] == []
    assert [i["request_id"] for i in _listing(api, T2V, request_id=rid)["items"]] == [rid]
    wide = api.get(BILLING, params={"start": "2020-01-01", "end": "2020-06-01"})
    assert wide.status_code == 400 and "90 days" in wide.json()["error"]["message"]


# ---------------------------------------------------------------------- the client (batch_runner.api.platform)


def _transport(key: str = "x") -> Transport:
    return Transport(
        httpx.Client(headers={"Authorization": f"Key {key}"}, timeout=60),
        RetryPolicy(attempts=2, base_s=0.01, cap_s=0.02),
        threading.Event(),
    )


def _span() -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    return now - timedelta(hours=1), now + timedelta(minutes=5)


def test_list_requests_follows_every_page(client_for):
    api = client_for(speed=1)  # nothing finishes while the pages are read, so no row changes place
    url = str(api.base_url).rstrip("/") + "/v1"
    payloads = [{"prompt": f"client {i}"} for i in range(5)]
    ids = {submit(api, T2V, p)["request_id"] for p in payloads}
    transport = _transport()
    records = list_requests(transport, url, T2V, *_span(), page_size=2)
    assert {r.request_id for r in records} == ids and len(records) == 5
    assert sorted(r.json_input["prompt"] for r in records if r.json_input) == sorted(p["prompt"] for p in payloads)
    assert all(r.endpoint_id == T2V and r.sent_at and r.sent_at.tzinfo for r in records)
    assert transport.requests_sent == 3  # pages of 2, 2 and 1
    assert list_requests(transport, url, FLASH, *_span()) == []


def test_billing_events_client_reads_exact_money(emu, api, media):
    body, _ = _done_reframe(api, media)
    second, _ = _done_reframe(api, media)
    events = billing_events(_transport(), f"{emu.url}/v1", *_span(), [FLASH], page_size=1)
    assert {e.request_id for e in events} == {body["request_id"], second["request_id"]}
    for e in events:
        assert (e.output_units, e.unit_price, e.percent_discount, e.cost_micro_usd) == (
            5,
            Decimal("0.06"),
            None,
            300_000,
        )
        assert e.endpoint_id == FLASH and e.timestamp.tzinfo is not None
    assert billing_events(_transport(), f"{emu.url}/v1", *_span(), [T2V]) == []


def test_billing_events_client_raises_auth_error_without_an_admin_key(emulator_factory):
    server = emulator_factory(admin_keys=frozenset({"admin"}))
    with pytest.raises(AuthError):
        billing_events(_transport("x"), f"{server.url}/v1", *_span(), None)
    assert billing_events(_transport("admin"), f"{server.url}/v1", *_span(), None) == []


def test_client_sends_utc_iso_and_refuses_naive_times():
    assert utc_iso(datetime(2025, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))) == "2025-01-01T00:00:00Z"
    with pytest.raises(ValueError, match="has no timezone"):
        utc_iso(datetime(2025, 1, 1))  # noqa: DTZ001 - the naive time this test must see refused


def test_records_parse_optional_fields_as_none_and_name_a_malformed_field():
    record = FalRequestRecord.from_item({"request_id": "r", "endpoint_id": "e"}, "item 0")
    assert (record.sent_at, record.started_at, record.status_code, record.json_input) == (None, None, None, None)
    for bad, field in [
        ({"endpoint_id": "e"}, "request_id"),
        ({"request_id": "r", "endpoint_id": "e", "sent_at": "soon"}, "sent_at"),
        ({"request_id": "r", "endpoint_id": "e", "status_code": "200"}, "status_code"),
        ({"request_id": "r", "endpoint_id": "e", "json_input": [1]}, "json_input"),
    ]:
        with pytest.raises(RemoteError, match=field):
            FalRequestRecord.from_item(bad, "item 0")
    with pytest.raises(RemoteError, match="expected an object"):
        FalRequestRecord.from_item(["r"], "item 0")


def test_billing_event_cost_from_nano_usd_else_from_units_price_and_discount():
    base = {"request_id": "r", "endpoint_id": "e", "timestamp": "2025-01-15T10:30:45Z"}
    half_up = BillingEvent.from_item({**base, "cost_estimate_nano_usd": 1500, "output_units": 1}, "item 0")
    assert half_up.cost_micro_usd == 2 and half_up.timestamp == datetime(2025, 1, 15, 10, 30, 45, tzinfo=UTC)
    computed = BillingEvent.from_item({**base, "output_units": 2, "unit_price": 0.025, "percent_discount": 10}, "x")
    assert (computed.output_units, computed.unit_price, computed.cost_micro_usd) == (2, Decimal("0.025"), 45_000)
    assert BillingEvent.from_item({**base, "cost_total": 0.0375}, "x").cost_micro_usd == 37_500
    for bad, field in [
        (base, "cost_estimate_nano_usd"),
        ({**base, "timestamp": None, "cost_total": 1}, "timestamp"),
        ({**base, "output_units": "many", "cost_total": 1}, "output_units"),
    ]:
        with pytest.raises(RemoteError, match=field):
            BillingEvent.from_item(bad, "item 0")


# ---------------------------------------------------------------------- usage, as fal documents it

USAGE = "/v1/models/usage"


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"expand": "time_series"}, "endpoint_id"),
        ({"endpoint_id": ",".join(f"x/{i}" for i in range(51)), "expand": "time_series"}, "endpoint_id"),
        ({"endpoint_id": T2V}, "expand"),
        ({"endpoint_id": T2V, "expand": "auth_method"}, "expand"),
        ({"endpoint_id": T2V, "expand": "everything"}, "expand"),
        ({"endpoint_id": T2V, "expand": "time_series", "bound_to_timeframe": "yes"}, "bound_to_timeframe"),
        ({"endpoint_id": T2V, "expand": "time_series", "timeframe": "year"}, "timeframe"),
        ({"endpoint_id": T2V, "expand": "time_series", "timezone": "Mars/Olympus"}, "timezone"),
        ({"endpoint_id": T2V, "expand": "time_series", "start": "soon"}, "start"),
    ],
)
def test_usage_refuses_what_fal_refuses_with_its_platform_error(api, params, needle):
    resp = api.get(USAGE, params=params)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["type"] == "validation_error" and needle in error["message"]


def test_usage_needs_a_key_and_an_admin_key_when_admin_keys_are_set(client_for):
    user = client_for(key="user", admin_keys=frozenset({"admin"}))
    query = {"endpoint_id": T2V, "expand": "time_series"}
    assert httpx.get(f"{user.base_url}{USAGE}", params=query).json()["error"]["type"] == "authorization_error"
    denied = user.get(USAGE, params=query)
    assert denied.status_code == 403 and denied.json()["error"]["type"] == "authorization_error"
    with httpx.Client(base_url=user.base_url, headers={"Authorization": "Key admin"}) as admin:
        assert admin.get(USAGE, params=query).status_code == 200


def test_usage_aligns_a_window_to_whole_days_unless_bound_to_timeframe_is_false(api, media):
    """bound_to_timeframe defaults to true: a window that starts after today's spend still returns
    it, aligned to the start of the day; false returns exactly the window asked for."""
    _done_reframe(api, media)
    [event] = api.get(BILLING).json()["billing_events"]
    spent_at = datetime.fromisoformat(event["timestamp"])
    start = spent_at + timedelta(seconds=1)
    window = {
        "endpoint_id": FLASH,
        "expand": "time_series",
        "start": start.isoformat(),
        "end": (start + timedelta(hours=1)).isoformat(),
        "timeframe": "day",
    }
    aligned = api.get(USAGE, params=window).json()["time_series"]
    if start.date() == spent_at.date():  # not across midnight: the day's bucket holds the spend
        [bucket] = aligned
        midnight = spent_at.replace(hour=0, minute=0, second=0, microsecond=0)
        assert datetime.fromisoformat(bucket["bucket"]) == midnight
        assert [(r["endpoint_id"], r["cost"], r["quantity"]) for r in bucket["results"]] == [(FLASH, 0.3, 5.0)]
    exact = api.get(USAGE, params={**window, "bound_to_timeframe": "false"}).json()
    assert exact == {"time_series": [], "next_cursor": None, "has_more": False}


def test_usage_summary_totals_the_window_per_endpoint(api, media):
    _done_reframe(api, media)
    _done_reframe(api, media)
    body = api.get(USAGE, params={"endpoint_id": [FLASH, T2V], "expand": "summary"}).json()
    assert "time_series" not in body
    assert [(r["endpoint_id"], r["quantity"], r["cost"], r["unit"]) for r in body["summary"]] == [
        (FLASH, 10.0, 0.6, "second")
    ]


def test_usage_client_asks_for_at_most_50_endpoint_ids_a_call(emu, api, media):
    from batch_runner.api.client import FalClient
    from batch_runner.config import FalHosts, Secret

    _done_reframe(api, media)
    client = FalClient(FalHosts.for_url(emu.url), Secret(EMU_KEY), policy=RetryPolicy(attempts=2, base_s=0.01))
    try:
        ids = [f"x/unknown-{i}" for i in range(100)] + [FLASH]  # 101 ids: three calls of ≤ 50
        start, end = _span()
        rows = client.usage(utc_iso(start), utc_iso(end), ids)
        assert [(r["endpoint_id"], r["cost"]) for r in rows] == [(FLASH, 0.3)]
        assert client.transport.requests_sent == 3
        with pytest.raises(ValueError, match="at least one endpoint id"):
            client.usage(utc_iso(start), utc_iso(end), [])
    finally:
        client.close()
