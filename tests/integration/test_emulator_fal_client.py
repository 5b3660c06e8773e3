"""Conformance: the official Python fal-client (pinned in pyproject's dev extras; nobody here wrote
it) against the emulator. Where the two disagree, the emulator is wrong until proven otherwise.

fal-client hard-codes https and fal's host names, so each test points its URL constants at the
emulator (the reference's §1 suggests exactly this). Every queue and storage flow the client has
is driven: uploads (v3 single part, v3 multipart, the `fal` fallback repository), submit, status,
result, cancel, `subscribe` (polling; with `client_timeout`), `start_timeout`, errors. It has no
status stream: its `stream()` posts to fal.run's `/stream` run endpoint, which is not the queue
and not emulated, and `subscribe` only polls (client.py `iter_events`). The status stream's
keep-alives are checked with fal's JS client (test_emulator_fal_js.py) and our own FalClient.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

fal_client = pytest.importorskip("fal_client")
fc = pytest.importorskip("fal_client.client")

REFRAME = "fal-ai/luma-dream-machine/ray-2-flash/reframe"
T2V = "luma/agent/ray/v3.2/text-to-video"


def point_at(server, monkeypatch) -> None:
    monkeypatch.setattr(fc, "QUEUE_URL_FORMAT", server.url + "/")
    monkeypatch.setattr(fc, "REST_URL", server.url)
    monkeypatch.setattr(fc, "CDN_URL", server.url)


@pytest.fixture
def client(emu, monkeypatch):
    point_at(emu, monkeypatch)
    return fal_client.SyncClient(key="conformance-key")


def emulator_log(server) -> dict:
    return {r["request_id"]: r for r in httpx.get(f"{server.url}/_emulator/requests", timeout=30).json()["requests"]}


def test_upload_file_then_subscribe_with_logs(client, media):
    url = client.upload_file(media["c5"])
    assert httpx.get(url).content == media["c5"].read_bytes()
    updates, enqueued = [], []
    result = client.subscribe(
        REFRAME,
        {"video_url": url, "aspect_ratio": "9:16"},
        with_logs=True,
        interval=0.02,
        on_enqueue=enqueued.append,
        on_queue_update=updates.append,
    )
    assert result["video"]["url"].endswith(".mp4") and result["video"]["content_type"] == "video/mp4"
    assert len(enqueued) == 1 and isinstance(updates[-1], fal_client.Completed) and updates[-1].error is None
    assert "InProgress" in [type(u).__name__ for u in updates]
    logs = [entry["message"] for u in updates if isinstance(u, fal_client.InProgress) for entry in u.logs]
    assert "Request received and queued" in logs


def test_upload_bytes_single_part(client):
    url = client.upload(b"\x00\x01 some bytes", "application/octet-stream", "blob.bin")
    assert httpx.get(url).content == b"\x00\x01 some bytes"


def test_submit_status_result_by_request_id(client):
    handle = client.submit(T2V, {"prompt": "conformance"})
    status = client.status(T2V, handle.request_id, with_logs=True)
    assert isinstance(status, (fal_client.Queued, fal_client.InProgress, fal_client.Completed))
    seen = list(handle.iter_events(with_logs=True, interval=0.02))
    assert isinstance(seen[-1], fal_client.Completed) and seen[-1].metrics["inference_time"] is not None
    done = client.status(T2V, handle.request_id, with_logs=True)
    assert isinstance(done, fal_client.Completed) and done.error is None and done.logs
    assert client.result(T2V, handle.request_id)["video"]["file_size"] > 0
    assert handle.get(interval=0.02) == client.result(T2V, handle.request_id)


def test_cancel_through_the_client(client, emulator_factory, monkeypatch):
    slow = emulator_factory(speed=5, concurrency=1)
    point_at(slow, monkeypatch)
    c = fal_client.SyncClient(key="k")
    first = c.submit(T2V, {"prompt": "runs"})
    second = c.submit(T2V, {"prompt": "waits"})
    assert isinstance(c.status(T2V, second.request_id), fal_client.Queued)
    c.cancel(T2V, second.request_id)  # still queued: OK
    while not isinstance(c.status(T2V, first.request_id), fal_client.InProgress):
        time.sleep(0.02)
    first.cancel()  # running: CANCELLATION_REQUESTED (202)
    for handle in (first, second):
        done = list(handle.iter_events(interval=0.02))[-1]
        # https://fal.ai/docs/documentation/model-apis/request-errors: client_cancelled, 499
        assert isinstance(done, fal_client.Completed) and done.error_type == "client_cancelled" and done.error
        with pytest.raises(fc.FalClientHTTPError) as err:
            handle.get(interval=0.02)
        assert (err.value.status_code, err.value.error_type) == (499, "client_cancelled")
    with pytest.raises(fc.FalClientHTTPError) as err:  # ALREADY_COMPLETED is a 400 the client raises
        c.cancel(T2V, second.request_id)
    assert err.value.status_code == 400
    assert {r["state"] for r in emulator_log(slow).values()} == {"CANCELLED"}


def test_validation_errors_surface_as_client_http_errors(client):
    with pytest.raises(fc.FalClientHTTPError) as err:
        client.submit(T2V, {"aspect_ratio": "9x16"})
    assert err.value.status_code == 422
    fields = {d["loc"][-1]: d["type"] for d in err.value.message}  # the client passes `detail` through
    assert fields == {"aspect_ratio": "enum", "prompt": "missing"}


def test_subscribe_with_client_timeout_raises_and_cancels_the_request(emulator_factory, monkeypatch):
    slow = emulator_factory(speed=1)  # queued 2 s, then 45 s of work
    point_at(slow, monkeypatch)
    with pytest.raises(fc.FalClientTimeoutError) as err:
        fal_client.SyncClient(key="k").subscribe(T2V, {"prompt": "too slow"}, client_timeout=1.5, interval=0.05)
    # client_timeout also sends X-Fal-Request-Timeout (client.py subscribe); the request never
    # started within it, and the client's best-effort cancel found it queued or already timed out
    row = emulator_log(slow)[err.value.request_id]
    assert row["state"] in ("CANCELLED", "COMPLETED") and row["cost_usd"] is None


def test_start_timeout_ends_in_a_504_user_timeout_the_client_does_not_retry(emulator_factory, monkeypatch):
    slow = emulator_factory(speed=1, concurrency=1)
    point_at(slow, monkeypatch)
    c = fal_client.SyncClient(key="k")
    busy = c.submit(T2V, {"prompt": "holds the only runner"})
    handle = c.submit(T2V, {"prompt": "waits too long"}, start_timeout=1.2)
    seen: list[tuple[str, int]] = []  # what the client's own httpx client received
    c._client.event_hooks["response"].append(lambda r: seen.append((r.url.path, r.status_code)))
    with pytest.raises(fc.FalClientHTTPError) as err:
        handle.get(interval=0.05)
    assert err.value.status_code == 504 and err.value.response_headers["x-fal-request-timeout-type"] == "user"
    assert err.value.error_type == "request_timeout"
    # one result call: a 504 with X-Fal-Request-Timeout-Type is never repeated (`_should_retry_response`)
    assert [code for path, code in seen if path.endswith(handle.request_id)] == [504]
    assert emulator_log(slow)[handle.request_id]["cost_usd"] is None
    busy.cancel()


def test_multipart_upload_of_a_file(client, media, monkeypatch):
    data = media["c5"].read_bytes()
    monkeypatch.setattr(fc, "MULTIPART_THRESHOLD", len(data) // 4)
    monkeypatch.setattr(fc, "MULTIPART_CHUNK_SIZE", len(data) // 3)  # four parts, the last one short
    url = client.upload_file(media["c5"])
    assert httpx.get(url).content == data


def test_multipart_upload_of_bytes(client, monkeypatch):
    data = bytes(range(256)) * 40
    monkeypatch.setattr(fc, "MULTIPART_THRESHOLD", 1000)
    monkeypatch.setattr(fc, "MULTIPART_CHUNK_SIZE", 4096)
    url = client.upload(data, "application/octet-stream", "parts.bin")
    assert httpx.get(url).content == data


def test_fallback_repository_initiate_then_put(client):
    url = client.upload(b"plain bytes", "text/plain", "note.txt", repository="fal")
    assert httpx.get(url).content == b"plain bytes"


def test_async_client_uploads_and_subscribes(emu, media, monkeypatch):
    point_at(emu, monkeypatch)

    async def go() -> tuple[str, dict]:
        c = fal_client.AsyncClient(key="k")
        url = await c.upload_file(media["c5"])
        return url, await c.subscribe(REFRAME, {"video_url": url, "aspect_ratio": "1:1"}, interval=0.02)

    url, result = asyncio.run(go())
    assert httpx.get(url).content == media["c5"].read_bytes()
    assert result["video"]["content_type"] == "video/mp4"


def test_client_retries_an_injected_429_transparently(emulator_factory, monkeypatch):
    server = emulator_factory(faults="rate_limit=1/1")
    point_at(server, monkeypatch)
    handle = fal_client.SyncClient(key="k").submit(T2V, {"prompt": "retry me"})
    log = httpx.get(f"{server.url}/_emulator/requests").json()["requests"]
    assert [r["http_status"] for r in log] == [429, 200] and log[1]["request_id"] == handle.request_id
