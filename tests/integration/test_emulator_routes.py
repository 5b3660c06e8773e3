"""The emulator's protocol over real HTTP: submit, status, stream, result, cancel, auth, errors."""

from __future__ import annotations

import itertools
import json

import httpx
import pytest

from tests.conftest import EMU_KEY
from tests.integration.emu_helpers import requests_log, submit, upload, usage, wait_done, wait_state

T2V = "luma/agent/ray/v3.2/text-to-video"
REFRAME = "luma/agent/ray/v3.2/reframe"


def test_submit_answers_with_ids_urls_and_position(api, emu):
    body = submit(api, T2V, {"prompt": "a harbour"})
    rid = body["request_id"]
    assert body["status"] == "IN_QUEUE" and body["queue_position"] == 0
    base = f"{emu.url}/luma/agent/requests/{rid}"
    assert (body["response_url"], body["status_url"], body["cancel_url"]) == (base, f"{base}/status", f"{base}/cancel")


def test_unknown_endpoint_is_404(api):
    resp = api.post("/fal-ai/luma-dream-machine/ray-9", json={"prompt": "x"})
    assert resp.status_code == 404 and "not found" in resp.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", f"/{T2V}"),
        ("GET", "/luma/agent/requests/x/status"),
        ("GET", "/luma/agent/requests/x"),
        ("PUT", "/luma/agent/requests/x/cancel"),
        ("GET", "/v1/models/pricing?endpoint_id=x"),
        ("POST", "/storage/auth/token"),
        ("POST", "/files/upload"),
    ],
)
def test_calls_without_a_key_are_401(emu, method, path):
    resp = httpx.request(method, emu.url + path, json={})
    assert resp.status_code == 401 and "Authorization: Key" in resp.json()["detail"]


def test_a_configured_key_list_refuses_other_keys(emulator_factory):
    server = emulator_factory(keys=frozenset({"right"}))
    wrong = httpx.post(f"{server.url}/{T2V}", json={"prompt": "x"}, headers={"Authorization": "Key wrong"})
    right = httpx.post(f"{server.url}/{T2V}", json={"prompt": "x"}, headers={"Authorization": "Key right"})
    assert (wrong.status_code, right.status_code) == (401, 200)


def test_invalid_input_is_422_naming_each_field(api):
    resp = api.post(
        f"/{REFRAME}",
        json={
            "video_url": "http://x/v.mp4",
            "aspect_ratio": "9x16",
            "resolution": "4k",
            "source_position": {"x_norm": 2},
        },
    )
    assert resp.status_code == 422
    locs = {tuple(d["loc"]) for d in resp.json()["detail"]}
    assert {
        ("body", "aspect_ratio"),
        ("body", "resolution"),
        ("body", "prompt"),
        ("body", "source_position", "y_norm"),
    } <= locs
    assert all({"loc", "msg", "type"} <= set(d) for d in resp.json()["detail"])


def test_body_must_be_a_json_object(api):
    assert api.post(f"/{T2V}", content=b"[1]", headers={"Content-Type": "application/json"}).status_code == 422
    assert api.post(f"/{T2V}", content=b"{nope", headers={"Content-Type": "application/json"}).status_code == 422


def test_status_codes_and_shapes_through_the_lifecycle(emulator_factory):
    server = emulator_factory(speed=20, concurrency=1)  # 45 fal-seconds of processing = about 2 s
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Key {EMU_KEY}"}, timeout=30) as api:
        first = submit(api, T2V, {"prompt": "one"})
        second = submit(api, T2V, {"prompt": "two"})
        queued = api.get(second["status_url"])
        assert queued.status_code == 202 and queued.json()["status"] == "IN_QUEUE"
        assert queued.json()["queue_position"] in (0, 1) and "logs" not in queued.json()
        running = wait_state(api, first["status_url"], "IN_PROGRESS")
        assert "logs" in running and running["logs"] is None
        with_logs = api.get(first["status_url"], params={"logs": "true"}).json()
        assert with_logs["logs"][0]["message"] == "Request received and queued"
        assert {"message", "level", "source", "timestamp"} <= set(with_logs["logs"][0])
        assert api.get(first["status_url"]).status_code == 202
        assert api.get(first["response_url"]).status_code == 400  # result before completion
        assert api.get(second["status_url"]).json()["queue_position"] == 0
        done = wait_done(api, first["status_url"], logs=True)
        assert done["status"] == "COMPLETED" and done["logs"] and "error" not in done
        assert done["metrics"]["inference_time"] >= 0
        api.put(second["cancel_url"])


def test_status_result_and_cancel_serve_only_the_owner_alias_form(api):
    """fal documents only owner/alias for status, result and cancel (docs: model-apis/inference/queue)."""
    rid = submit(api, T2V, {"prompt": "x"})["request_id"]
    assert api.get(f"/luma/agent/requests/{rid}/status").status_code in (200, 202)
    assert api.get(f"/{T2V}/requests/{rid}/status").status_code == 404
    assert api.get(f"/{T2V}/requests/{rid}/status/stream").status_code == 404
    assert api.get(f"/{T2V}/requests/{rid}").status_code == 404
    assert api.put(f"/{T2V}/requests/{rid}/cancel").json() == {"status": "NOT_FOUND"}
    assert api.get(f"/fal-ai/luma-dream-machine/requests/{rid}/status").status_code == 404
    assert api.get("/luma/agent/requests/unknown/status").status_code == 404


def test_result_carries_request_id_and_billable_units(api, media):
    url = upload(api, media["c5"])
    body = submit(api, REFRAME, {"prompt": "p", "video_url": url, "aspect_ratio": "9:16", "resolution": "720p"})
    wait_done(api, body["status_url"])
    resp = api.get(body["response_url"])
    assert resp.status_code == 200
    assert resp.headers["x-fal-request-id"] == body["request_id"]
    # One unit price per endpoint ($0.06/s, its 540p price); 720p folds its ×2 into the quantity.
    assert resp.headers["x-fal-billable-units"] == "10"
    video = resp.json()["video"]
    assert (
        video["content_type"] == "video/mp4" and video["file_size"] > 0 and video["url"].startswith(api.base_url.scheme)
    )


def test_result_of_unknown_request_is_404(api):
    assert api.get("/luma/agent/requests/nope").status_code == 404


def test_cancel_answers(emulator_factory):
    server = emulator_factory(speed=5, concurrency=1)
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Key {EMU_KEY}"}, timeout=30) as api:
        running = submit(api, T2V, {"prompt": "a"})
        queued = submit(api, T2V, {"prompt": "b"})
        wait_state(api, running["status_url"], "IN_PROGRESS")
        ok = api.put(queued["cancel_url"])
        assert (ok.status_code, ok.json()) == (200, {"status": "OK"})
        requested = api.put(running["cancel_url"])
        assert (requested.status_code, requested.json()) == (202, {"status": "CANCELLATION_REQUESTED"})
        done = wait_done(api, running["status_url"])
        # fal's documented type for a cancelled request (https://fal.ai/docs/documentation/model-apis/request-errors)
        assert done["error_type"] == "client_cancelled" and done["error"]
        result = api.get(running["response_url"])
        assert result.status_code == 499 and result.headers["x-fal-error-type"] == "client_cancelled"
        assert result.json()["error_type"] == "client_cancelled"
        again = api.put(queued["cancel_url"])
        assert (again.status_code, again.json()) == (400, {"status": "ALREADY_COMPLETED"})
        missing = api.put("/luma/agent/requests/nope/cancel")
        assert (missing.status_code, missing.json()) == (404, {"status": "NOT_FOUND"})
        assert api.get(queued["response_url"]).status_code == 499
        log = {r["request_id"]: r for r in requests_log(api)["requests"]}
        assert log[queued["request_id"]]["state"] == "CANCELLED" and log[queued["request_id"]]["cost_usd"] is None
        assert usage(api)["time_series"] == []  # nothing billed


def test_concurrency_limit_holds_and_positions_count_down(emulator_factory):
    # At real speed (2 s in the queue, 45 s of processing) every snapshot below is stable.
    server = emulator_factory(speed=1, concurrency=2)
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Key {EMU_KEY}"}, timeout=30) as api:
        subs = [submit(api, T2V, {"prompt": f"p{i}"}) for i in range(5)]

        def snapshot():
            states = [api.get(s["status_url"]).json() for s in subs]
            return [s["status"] for s in states], [s.get("queue_position") for s in states]

        assert snapshot() == (["IN_QUEUE"] * 5, [0, 1, 2, 3, 4])
        wait_state(api, subs[1]["status_url"], "IN_PROGRESS")
        assert snapshot() == (["IN_PROGRESS"] * 2 + ["IN_QUEUE"] * 3, [None, None, 0, 1, 2])
        assert api.put(subs[0]["cancel_url"]).json() == {"status": "CANCELLATION_REQUESTED"}
        wait_state(api, subs[2]["status_url"], "IN_PROGRESS")
        assert snapshot() == (
            ["COMPLETED", "IN_PROGRESS", "IN_PROGRESS", "IN_QUEUE", "IN_QUEUE"],
            [None, None, None, 0, 1],
        )
        for s in subs:
            api.put(s["cancel_url"])


def test_status_stream_sends_each_change_and_ends_when_complete(api):
    body = submit(api, T2V, {"prompt": "stream me"})
    events = []
    with api.stream("GET", body["status_url"] + "/stream", params={"logs": 1}) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert events[-1]["status"] == "COMPLETED"
    assert {"IN_PROGRESS", "COMPLETED"} <= {e["status"] for e in events}
    assert all("logs" in e for e in events if e["status"] != "IN_QUEUE")


def test_status_stream_keep_alives_are_comment_lines_not_repeated_events(emulator_factory):
    """fal keeps a quiet status stream open with comment lines (": …"), not repeated statuses
    (https://fal.ai/docs/inference-api/queue/status-stream)."""
    server = emulator_factory(speed=10, keepalive_s=0.05)
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Key {EMU_KEY}"}, timeout=30) as api:
        body = submit(api, T2V, {"prompt": "slow"})
        events, comments = [], 0
        with api.stream("GET", body["status_url"] + "/stream", params={"logs": 1}) as resp:
            for line in resp.iter_lines():
                if line.startswith(":"):
                    comments += 1
                elif line.startswith("data: "):
                    events.append(line)
        assert comments >= 3
        assert not any(a == b for a, b in itertools.pairwise(events))  # a status is sent once per change
        assert json.loads(events[-1][6:])["status"] == "COMPLETED"


def test_a_request_not_started_by_its_start_timeout_ends_504_user_unbilled(emulator_factory):
    """X-Fal-Request-Timeout (https://docs.fal.ai/documentation/model-apis/common-parameters)."""
    server = emulator_factory(speed=1, concurrency=1)  # the first starts after 2 s, the deadline is 0.5 s
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Key {EMU_KEY}"}, timeout=30) as api:
        running = submit(api, T2V, {"prompt": "runs long"})
        waiting = api.post(f"/{T2V}", json={"prompt": "waits"}, headers={"X-Fal-Request-Timeout": "0.5"}).json()
        behind = submit(api, T2V, {"prompt": "behind it"})
        before = api.get(behind["status_url"]).json()["queue_position"]
        done = wait_done(api, waiting["status_url"])
        assert done["error_type"] == "request_timeout" and done["error"]
        result = api.get(waiting["response_url"])
        assert result.status_code == 504 and result.headers["x-fal-request-timeout-type"] == "user"
        assert result.headers["x-fal-request-id"] == waiting["request_id"]
        assert "x-fal-billable-units" not in result.headers
        assert api.get(behind["status_url"]).json()["queue_position"] == before - 1  # it moved up
        log = {r["request_id"]: r for r in requests_log(api)["requests"]}
        assert log[waiting["request_id"]]["cost_usd"] is None
        for body in (running, behind):
            api.put(body["cancel_url"])


def test_a_request_that_started_in_time_runs_past_its_start_timeout(emulator_factory):
    """Once a runner starts it, "the timeout stops" (docs: model-apis/common-parameters)."""
    server = emulator_factory(speed=20)  # starts after 0.1 s, runs about 2 s
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Key {EMU_KEY}"}, timeout=30) as api:
        body = api.post(f"/{T2V}", json={"prompt": "starts"}, headers={"X-Fal-Request-Timeout": "0.5"}).json()
        done = wait_done(api, body["status_url"])
        assert "error" not in done and api.get(body["response_url"]).status_code == 200


@pytest.mark.parametrize("value", ["soon", "0.1", "-3"])
def test_a_malformed_start_timeout_is_refused_400_bad_request(api, value):
    resp = api.post(f"/{T2V}", json={"prompt": "x"}, headers={"X-Fal-Request-Timeout": value})
    assert resp.status_code == 400 and resp.json()["error_type"] == "bad_request"
    assert requests_log(api)["requests"][0]["state"] == "REFUSED"


def test_inspection_lists_every_submission(api):
    submit(api, T2V, {"prompt": "a"})
    api.post(f"/{T2V}", json={"aspect_ratio": "2:1"})
    rows = requests_log(api)["requests"]
    assert [r["http_status"] for r in rows] == [200, 422]
    assert rows[1]["state"] == "REFUSED" and rows[1]["request_id"] is None
    assert all(len(r["input_sha256"]) == 64 and r["received_at"] for r in rows)
    assert {
        "request_id",
        "endpoint",
        "input_sha256",
        "received_at",
        "state",
        "billable_units",
        "cost_usd",
        "error",
    } <= set(rows[0])


def test_unfetchable_input_fails_the_run_with_422(api):
    body = submit(api, REFRAME, {"prompt": "p", "video_url": "http://127.0.0.1:1/missing.mp4", "aspect_ratio": "1:1"})
    done = wait_done(api, body["status_url"])
    assert done["error_type"] == "file_download_error" and "video_url" in done["error"]
    result = api.get(body["response_url"])
    assert result.status_code == 422 and result.json()["detail"][0]["loc"] == ["body", "video_url"]
    assert "x-fal-billable-units" not in result.headers


def test_ray32_reframe_rejects_a_source_over_30_seconds_unbilled(api, media):
    body = submit(api, REFRAME, {"prompt": "p", "video_url": upload(api, media["c30_04"]), "aspect_ratio": "1:1"})
    done = wait_done(api, body["status_url"])
    assert "at most 30 s" in done["error"]
    assert api.get(body["response_url"]).status_code == 422
    ok = submit(api, REFRAME, {"prompt": "p", "video_url": upload(api, media["c30"]), "aspect_ratio": "1:1"})
    assert "error" not in wait_done(api, ok["status_url"])
    assert api.get(ok["response_url"]).headers["x-fal-billable-units"] == "30"
