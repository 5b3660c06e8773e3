"""Holds over real HTTP: a client stalled inside a window that a test can find, then kill or release."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.conftest import EMU_KEY
from tests.integration.emu_helpers import MAX_POLLS, POLL_S, requests_log, submit, upload, wait_done

T2V = "luma/agent/ray/v3.2/text-to-video"
LONG_HOLD_S = 120  # longer than any test: holds here end by release or disconnect, never by time


def _holds(api: httpx.Client) -> dict[str, Any]:
    return api.get("/_emulator/holds").json()


def _wait_holds(api: httpx.Client, ready: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    for _ in range(MAX_POLLS):
        view = _holds(api)
        if ready(view):
            return view
        time.sleep(POLL_S)
    raise AssertionError(f"the holds never got there: {_holds(api)}")


def _listed(api: httpx.Client) -> list[dict[str, Any]]:
    return api.get("/v1/models/requests/by-endpoint", params={"endpoint_id": T2V, "expand": "payloads"}).json()["items"]


def test_a_held_submit_is_listed_before_its_answer_arrives(emu, api):
    armed = api.post("/_emulator/holds", json={"submit_s": LONG_HOLD_S, "submit_count": 1}).json()
    assert armed["submit"] == {"seconds": LONG_HOLD_S, "remaining": 1, "held_now": 0, "held_total": 0}
    payload = {"prompt": "held"}
    answer: dict[str, httpx.Response] = {}

    def post() -> None:
        with httpx.Client(base_url=emu.url, headers={"Authorization": f"Key {EMU_KEY}"}, timeout=LONG_HOLD_S) as c:
            answer["submit"] = c.post(f"/{T2V}", json=payload)

    client = threading.Thread(target=post)
    client.start()
    _wait_holds(api, lambda h: h["submit"]["held_now"] == 1)
    [item] = _listed(api)
    assert item["json_input"] == payload and "submit" not in answer
    assert [r["request_id"] for r in requests_log(api)["requests"]] == [item["request_id"]]
    assert api.delete("/_emulator/holds").json()["submit"]["seconds"] == 0  # release the client
    client.join(timeout=60)
    assert answer["submit"].status_code == 200 and answer["submit"].json()["request_id"] == item["request_id"]
    assert _holds(api)["submit"] == {"seconds": 0, "remaining": None, "held_now": 0, "held_total": 1}


def test_a_client_killed_inside_the_submit_hold_leaves_a_request_that_runs_and_bills(emu, api):
    api.post("/_emulator/holds", json={"submit_s": LONG_HOLD_S})
    script = (
        "import httpx, sys; httpx.post(sys.argv[1], json={'prompt': 'killed'}, "
        f"headers={{'Authorization': 'Key {EMU_KEY}'}}, timeout={LONG_HOLD_S})"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, f"{emu.url}/{T2V}"])
    try:
        _wait_holds(api, lambda h: h["submit"]["held_now"] == 1)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    _wait_holds(api, lambda h: h["submit"]["held_now"] == 0)  # the hold ends when its client goes away
    [item] = _listed(api)
    assert item["json_input"] == {"prompt": "killed"}
    base = f"/luma/agent/requests/{item['request_id']}"
    assert wait_done(api, f"{base}/status")["status"] == "COMPLETED"
    [event] = api.get("/v1/models/billing-events").json()["billing_events"]
    assert event["request_id"] == item["request_id"]


def test_a_held_download_sends_half_then_the_rest_when_released(api, media):
    data = media["c5"].read_bytes()
    url = upload(api, media["c5"])
    api.post("/_emulator/holds", json={"download_s": LONG_HOLD_S, "download_count": 1})
    with httpx.stream("GET", url, timeout=LONG_HOLD_S) as resp:
        assert int(resp.headers["content-length"]) == len(data)
        chunks = resp.iter_raw()
        got = b""
        while len(got) < len(data) // 2:
            got += next(chunks)
        _wait_holds(api, lambda h: h["download"]["held_now"] == 1)
        assert got == data[: len(data) // 2]  # nothing more arrives inside the hold
        api.delete("/_emulator/holds")
        got += b"".join(chunks)
    assert got == data
    assert httpx.get(url).content == data  # count 1: the next download is not held
    assert _holds(api)["download"]["held_total"] == 1


def test_a_held_download_finishes_by_itself_after_the_hold(emulator_factory, media):
    server = emulator_factory(hold_download_s=0.2)
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Key {EMU_KEY}"}, timeout=60) as api:
        url = upload(api, media["c5"])
        assert httpx.get(url).content == media["c5"].read_bytes()
        assert httpx.get(url, headers={"Range": "bytes=0-9"}).status_code == 206  # ranges are never held
        assert _holds(api)["download"] == {"seconds": 0.2, "remaining": None, "held_now": 0, "held_total": 1}


def test_counts_limit_holds_to_the_first_occurrences(emulator_factory, media):
    server = emulator_factory(hold_submit_s=0.05, hold_submit_count=2, hold_download_s=0.05, hold_download_count=1)
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Key {EMU_KEY}"}, timeout=60) as api:
        ids = [submit(api, T2V, {"prompt": f"count {i}"})["request_id"] for i in range(3)]
        url = upload(api, media["c0_5"])
        bodies = [httpx.get(url).content for _ in range(2)]
        holds = _holds(api)
        assert len(set(ids)) == 3 and bodies[0] == bodies[1] == media["c0_5"].read_bytes()
        assert (holds["submit"]["held_total"], holds["submit"]["remaining"]) == (2, 0)
        assert (holds["download"]["held_total"], holds["download"]["remaining"]) == (1, 0)
        rearmed = api.post("/_emulator/holds", json={"submit_s": 0.05, "submit_count": 1}).json()
        assert rearmed["submit"]["remaining"] == 1 and rearmed["download"]["remaining"] == 0  # untouched
        submit(api, T2V, {"prompt": "count again"})
        assert _holds(api)["submit"]["held_total"] == 3


def test_the_holds_route_refuses_bad_settings_and_health_reports_holds(api):
    for bad in ({"submit_s": -1}, {"submit_count": 1.5}, {"submit_s": "5"}, {"nope": 1}, [1]):
        resp = api.post("/_emulator/holds", content=json.dumps(bad), headers={"Content-Type": "application/json"})
        assert resp.status_code == 422, bad
    assert _holds(api)["submit"]["seconds"] == 0  # a refused setting changes nothing
    health = api.get("/_emulator/health").json()
    assert set(health["holds"]) == {"submit", "download"} and health["outage"]["active"] is False
