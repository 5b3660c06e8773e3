"""Conformance: the official fal-client (which nobody here wrote) against the emulator.

fal-client hard-codes https and fal's host names, so each test points its URL constants at the
emulator (the reference's §1 suggests exactly this). Where the two disagree, the emulator is wrong.
"""

from __future__ import annotations

import httpx
import pytest

fal_client = pytest.importorskip("fal_client")
fc = pytest.importorskip("fal_client.client")

REFRAME = "fal-ai/luma-dream-machine/ray-2-flash/reframe"
T2V = "luma/agent/ray/v3.2/text-to-video"


@pytest.fixture
def client(emu, monkeypatch):
    monkeypatch.setattr(fc, "QUEUE_URL_FORMAT", emu.url + "/")
    monkeypatch.setattr(fc, "REST_URL", emu.url)
    monkeypatch.setattr(fc, "CDN_URL", emu.url)
    return fal_client.SyncClient(key="conformance-key")


def test_upload_file_then_subscribe_with_logs(client, media):
    url = client.upload_file(media["c5"])
    assert httpx.get(url).content == media["c5"].read_bytes()
    updates = []
    result = client.subscribe(REFRAME, {"video_url": url, "aspect_ratio": "9:16"}, with_logs=True,
                              on_queue_update=updates.append)
    assert result["video"]["url"].endswith(".mp4") and result["video"]["content_type"] == "video/mp4"
    kinds = [type(u).__name__ for u in updates]
    assert "InProgress" in kinds
    logs = [entry["message"] for u in updates if isinstance(u, fal_client.InProgress) for entry in u.logs]
    assert "Request received and queued" in logs


def test_submit_status_result_by_request_id(client):
    handle = client.submit(T2V, {"prompt": "conformance"})
    status = client.status(T2V, handle.request_id, with_logs=True)
    assert isinstance(status, (fal_client.Queued, fal_client.InProgress, fal_client.Completed))
    handle.get(interval=0.02)
    done = client.status(T2V, handle.request_id, with_logs=True)
    assert isinstance(done, fal_client.Completed) and done.error is None and done.logs
    assert client.result(T2V, handle.request_id)["video"]["file_size"] > 0


def test_cancel_through_the_client(client, emulator_factory, monkeypatch):
    slow = emulator_factory(speed=1, concurrency=1)
    monkeypatch.setattr(fc, "QUEUE_URL_FORMAT", slow.url + "/")
    c = fal_client.SyncClient(key="k")
    first = c.submit(T2V, {"prompt": "runs"})
    second = c.submit(T2V, {"prompt": "waits"})
    assert isinstance(c.status(T2V, second.request_id), fal_client.Queued)
    c.cancel(T2V, second.request_id)
    done = c.status(T2V, second.request_id)
    assert isinstance(done, fal_client.Completed) and done.error_type == "client_cancelled"
    c.cancel(T2V, first.request_id)


def test_validation_errors_surface_as_client_http_errors(client):
    with pytest.raises(fal_client.client.FalClientHTTPError) as err:
        client.submit(T2V, {"aspect_ratio": "9x16"})
    assert err.value.status_code == 422


def test_multipart_upload_through_the_client(client, media, monkeypatch):
    data = media["c5"].read_bytes()
    monkeypatch.setattr(fc, "MULTIPART_THRESHOLD", len(data) // 4)
    monkeypatch.setattr(fc, "MULTIPART_CHUNK_SIZE", len(data) // 3)  # four parts, the last one short
    url = client.upload_file(media["c5"])
    assert httpx.get(url).content == data


def test_fallback_repository_initiate_then_put(client):
    url = client.upload(b"plain bytes", "text/plain", "note.txt", repository="fal")
    assert httpx.get(url).content == b"plain bytes"


def test_client_retries_an_injected_429_transparently(emulator_factory, monkeypatch):
    server = emulator_factory(faults="rate_limit=1/1")
    monkeypatch.setattr(fc, "QUEUE_URL_FORMAT", server.url + "/")
    handle = fal_client.SyncClient(key="k").submit(T2V, {"prompt": "retry me"})
    log = httpx.get(f"{server.url}/_emulator/requests").json()["requests"]
    assert [r["http_status"] for r in log] == [429, 200] and log[1]["request_id"] == handle.request_id
