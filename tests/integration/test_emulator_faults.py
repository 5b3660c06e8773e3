"""Every injected fault, over real HTTP, and that decisions are reproducible from the seed."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from batch_runner.api.transport import is_ingress_error
from batch_runner.emulator.faults import FAULTS, FaultPlan
from tests.conftest import EMU_KEY
from tests.integration.emu_helpers import requests_log, submit, upload, usage, wait_done

T2V = "luma/agent/ray/v3.2/text-to-video"
FLASH = "fal-ai/luma-dream-machine/ray-2-flash/reframe"


@pytest.fixture
def faulty(emulator_factory):
    """An emulator with the given fault spec, and a client for it."""
    clients = []

    def make(spec: str, **settings):
        server = emulator_factory(faults=spec, **settings)
        client = httpx.Client(base_url=server.url, headers={"Authorization": f"Key {EMU_KEY}"}, timeout=30)
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()


def test_rate_limit_is_429_with_retry_after(faulty):
    api = faulty("rate_limit=1/1")
    first = api.post(f"/{T2V}", json={"prompt": "a"})
    assert first.status_code == 429 and first.headers["Retry-After"] == "1"
    assert api.post(f"/{T2V}", json={"prompt": "a"}).status_code == 200
    assert [r["http_status"] for r in requests_log(api)["requests"]] == [429, 200]


def test_bad_gateway_looks_like_nginx_without_a_request_id(faulty):
    api = faulty("bad_gateway=1/2")
    body = None
    statuses = []
    for _ in range(3):
        resp = api.post(f"/{T2V}", json={"prompt": "b"})
        statuses.append(resp.status_code)
        if resp.status_code >= 500:
            assert "nginx" in resp.text and "x-fal-request-id" not in resp.headers
        else:
            body = resp.json()
    assert statuses == [502, 503, 200] and body is not None


def test_gateway_timeout_creates_no_request(faulty):
    api = faulty("gateway_timeout=1/1")
    resp = api.post(f"/{T2V}", json={"prompt": "c"})
    assert resp.status_code == 504 and resp.headers["X-Fal-Error-Type"] == "request_timeout"
    assert resp.json() == {"detail": "Request timed out", "error_type": "request_timeout"}
    [row] = requests_log(api)["requests"]
    assert (row["state"], row["request_id"], row["http_status"]) == ("REFUSED", None, 504)


def test_dropped_connection_after_submit_leaves_a_paid_duplicate(faulty, media):
    api = faulty("drop_after_submit=1/1")
    url = upload(api, media["c5"])
    payload = {"video_url": url, "aspect_ratio": "9:16"}
    with pytest.raises(httpx.RemoteProtocolError):
        api.post(f"/{FLASH}", json=payload)
    retry = submit(api, FLASH, payload)  # the naive client retry
    wait_done(api, retry["status_url"])
    rows = requests_log(api)["requests"]
    assert len(rows) == 2 and len({r["request_id"] for r in rows}) == 2
    assert rows[0]["input_sha256"] == rows[1]["input_sha256"]
    for _ in range(3000):  # the dropped one runs too
        rows = requests_log(api)["requests"]
        if all(r["state"] == "COMPLETED" for r in rows):
            break
    assert [r["cost_usd"] for r in rows] == ["0.3", "0.3"]  # billed twice: 5 s × $0.06
    billed = usage(api)["time_series"][0]["results"][0]
    assert (billed["quantity"], billed["cost"]) == (10.0, 0.6)


def test_failed_run_completes_with_a_retryable_error_and_is_not_billed(faulty):
    api = faulty("fail=1")
    body = submit(api, T2V, {"prompt": "d"})
    done = wait_done(api, body["status_url"])
    assert (done["status"], done["error_type"]) == ("COMPLETED", "runner_disconnected")
    result = api.get(body["response_url"])
    assert result.status_code == 503 and result.headers["X-Fal-Error-Type"] == "runner_disconnected"
    assert "x-fal-billable-units" not in result.headers
    assert usage(api)["time_series"] == []


def test_refused_content_is_a_422_content_policy_error(faulty):
    api = faulty("refuse=1")
    body = submit(api, T2V, {"prompt": "e"})
    done = wait_done(api, body["status_url"])
    assert done["error_type"] == "content_policy_violation"
    result = api.get(body["response_url"])
    assert result.status_code == 422 and result.json()["detail"][0]["type"] == "content_policy_violation"


def test_locked_account_is_403(faulty):
    api = faulty("lock=1")
    resp = api.post(f"/{T2V}", json={"prompt": "f"})
    assert resp.status_code == 403 and resp.json()["detail"].startswith("User is locked. Reason: Exhausted balance")


def test_expired_result_is_404_while_status_stays_completed(faulty):
    api = faulty("expire=1")
    body = submit(api, T2V, {"prompt": "g"})
    assert wait_done(api, body["status_url"])["status"] == "COMPLETED"
    result = api.get(body["response_url"])
    assert result.status_code == 404 and "expired" in result.json()["detail"]


def test_results_also_expire_after_the_retention_time(emulator_factory):
    server = emulator_factory(result_ttl_s=0)
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Key {EMU_KEY}"}, timeout=30) as api:
        body = submit(api, T2V, {"prompt": "h"})
        wait_done(api, body["status_url"])
        assert api.get(body["response_url"]).status_code == 404


def _output_url(api, media) -> tuple[str, bytes]:
    body = submit(api, FLASH, {"video_url": upload(api, media["c5"]), "aspect_ratio": "1:1"})
    wait_done(api, body["status_url"])
    url = api.get(body["response_url"]).json()["video"]["url"]
    return url, b""


def test_truncated_download_drops_midway_then_serves_whole(faulty, media):
    api = faulty("truncate_download=1/1")
    url, _ = _output_url(api, media)
    with pytest.raises(httpx.RemoteProtocolError):
        api.get(url)
    whole = api.get(url)
    assert whole.status_code == 200 and len(whole.content) == int(whole.headers["content-length"])


def test_slow_download_still_delivers_every_byte(faulty, media):
    api = faulty("slow_download=1/1")
    url, _ = _output_url(api, media)
    slow = api.get(url)
    fast = api.get(url)
    assert slow.status_code == fast.status_code == 200
    assert hashlib.sha256(slow.content).digest() == hashlib.sha256(fast.content).digest()
    assert requests_log(api)["faults_fired"] == {"slow_download": 1}


def test_fault_decisions_are_reproducible_from_the_seed():
    keys = [("submit", f"input{i}", 1) for i in range(200)]
    a = [FaultPlan("rate_limit=0.3", seed=7).fires("rate_limit", *k) for k in keys]
    b = [FaultPlan("rate_limit=0.3", seed=7).fires("rate_limit", *k) for k in keys]
    c = [FaultPlan("rate_limit=0.3", seed=8).fires("rate_limit", *k) for k in keys]
    assert a == b and a != c
    assert 30 < sum(a) < 90  # about 30 % of 200


def test_fault_limits_and_spec_errors():
    plan = FaultPlan("fail=1/2", seed=1)
    assert [plan.fires("fail", i) for i in range(4)] == [True, True, False, False]
    for bad in ("nope=1", "fail=2", "fail=x", "fail=1/-1", "outage=5", "outage=x+1", "outage=-1+2", "outage=1+0"):
        with pytest.raises(ValueError, match="fault"):
            FaultPlan(bad)
    assert set(FAULTS) == {
        "rate_limit",
        "bad_gateway",
        "gateway_timeout",
        "drop_after_submit",
        "fail",
        "refuse",
        "slow_download",
        "truncate_download",
        "lock",
        "expire",
        "stream_unavailable",
        "outage",
        "outage_all",
    }


def test_unavailable_stream_is_an_nginx_503(faulty):
    api = faulty("stream_unavailable=1")
    body = submit(api, T2V, {"prompt": "s"})
    resp = api.get(body["status_url"] + "/stream")
    assert resp.status_code == 503 and "nginx" in resp.text
    assert api.get(body["status_url"]).status_code in (200, 202)


def test_same_seed_gives_the_same_faults_over_http(emulator_factory):
    def run(seed: int) -> list[int]:
        server = emulator_factory(faults="rate_limit=0.5", seed=seed)
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Key {EMU_KEY}"}) as api:
            return [api.post(f"/{T2V}", json={"prompt": f"p{i}"}).status_code for i in range(16)]

    first, again = run(3), run(3)
    assert first == again and set(first) == {200, 429}


# ---------------------------------------------------------------------- output downloads and outages


def _stored_file(api: httpx.Client, data: bytes = b"x" * 4096) -> str:
    """A file stored through initiate-then-PUT: a path no call fault touches, so the first faultable
    call of the test is the download itself."""
    init = api.post("/storage/upload/initiate", json={"file_name": "clip.bin", "content_type": "video/mp4"}).json()
    assert httpx.put(init["upload_url"], content=data).status_code == 200
    return init["file_url"]


def test_rate_limit_and_bad_gateway_also_fire_on_downloads(faulty):
    api = faulty("rate_limit=1/1,bad_gateway=1/2")
    url = _stored_file(api)
    answers = [httpx.get(url) for _ in range(4)]
    assert [a.status_code for a in answers] == [429, 502, 503, 200]
    assert answers[0].headers["Retry-After"] == "1"
    assert all("nginx" in a.text and "x-fal-request-id" not in a.headers for a in answers[1:3])
    assert answers[3].content == b"x" * 4096


def test_download_faults_are_the_same_for_the_same_seed(emulator_factory):
    def run(seed: int) -> list[int]:
        server = emulator_factory(faults="rate_limit=0.5", seed=seed)
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Key {EMU_KEY}"}) as api:
            url = _stored_file(api)
            return [httpx.get(url).status_code for _ in range(16)]

    first, again = run(5), run(5)
    assert first == again and set(first) == {200, 429}


def _reads(api: httpx.Client, body: dict, file_url: str) -> list[httpx.Response]:
    """One call of every read route: status, status stream, result, cancel, file download."""
    return [
        api.get(body["status_url"]),
        api.get(body["status_url"] + "/stream"),
        api.get(body["response_url"]),
        api.put(body["cancel_url"]),
        httpx.get(file_url),
    ]


def _is_outage(resp: httpx.Response) -> bool:
    return is_ingress_error(resp) and resp.headers["content-type"].startswith("text/html")


def test_an_outage_started_by_the_control_route_fails_every_read_until_ended(faulty):
    api = faulty("", speed=1)  # requests stay queued: no state changes during the test
    body, url = submit(api, T2V, {"prompt": "o"}), _stored_file(api)
    assert api.post("/_emulator/outage", json={"seconds": 600}).json()["active"] is True
    reads = _reads(api, body, url)
    assert all(_is_outage(r) for r in reads) and {r.status_code for r in reads} == {502, 503}
    assert httpx.get(body["status_url"]).status_code in (502, 503)  # nginx answers before any key check
    assert api.post(f"/{T2V}", json={"prompt": "still accepted"}).status_code == 200  # submits are not covered
    ended = api.delete("/_emulator/outage").json()
    assert (ended["active"], ended["answered"]) == (False, 6)
    assert api.get(body["status_url"]).status_code == 202 and httpx.get(url).status_code == 200
    api.post("/_emulator/outage", json={"seconds": 600, "submits": True})
    assert _is_outage(api.post(f"/{T2V}", json={"prompt": "refused by nginx"}))
    api.delete("/_emulator/outage")
    log = requests_log(api)
    assert len(log["requests"]) == 2 and log["faults_fired"] == {"outage": 7}
    for bad in ({"seconds": 0}, {"seconds": "5"}, {"seconds": 5, "submits": "yes"}):
        assert api.post("/_emulator/outage", json=bad).status_code == 422


def test_an_outage_in_the_fault_spec_covers_its_window_of_fal_time(faulty):
    api = faulty("outage=0+6000", speed=10)  # 600 real seconds from the start
    body = submit(api, T2V, {"prompt": "spec"})
    assert all(_is_outage(r) for r in _reads(api, body, _stored_file(api)))
    later = faulty("outage=6000+10", speed=10)  # starts after 600 real seconds
    body = submit(later, T2V, {"prompt": "later"})
    assert later.get(body["status_url"]).status_code in (200, 202)
    [window] = later.get("/_emulator/outage").json()["windows"]
    assert window["starts_in_s"] > 500 and window["submits"] is False


def test_outage_all_also_refuses_submits_without_creating_requests(faulty):
    api = faulty("outage_all=0+6000", speed=10)
    assert _is_outage(api.post(f"/{T2V}", json={"prompt": "nothing"}))
    assert requests_log(api)["requests"] == []
