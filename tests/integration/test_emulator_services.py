"""Emulator storage, platform API, webhooks and outputs, over real HTTP and checked with ffprobe."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import subprocess
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from batch_runner import catalog
from tests.conftest import EMU_KEY
from tests.integration.emu_helpers import submit, upload, usage, wait_done

T2V = "luma/agent/ray/v3.2/text-to-video"


# ---------------------------------------------------------------------- storage


def test_cdn_token_then_single_part_upload_is_served_back(api, media):
    token = api.post("/storage/auth/token", params={"storage_type": "fal-cdn-v3"}, json={}).json()
    assert token["token_type"] == "Bearer" and token["base_url"] == str(api.base_url).rstrip("/")
    assert "T" in token["expires_at"] and token["expires_at"].endswith("+00:00")
    data = media["c0_5"].read_bytes()
    resp = httpx.post(
        f"{api.base_url}/files/upload",
        content=data,
        headers={
            "Authorization": f"Bearer {token['token']}",
            "Content-Type": "video/mp4",
            "X-Fal-File-Name": "my clip.mp4",
        },
    )
    url = resp.json()["access_url"]
    assert resp.status_code == 200 and url.endswith("/my_clip.mp4")
    got = httpx.get(url)
    assert got.content == data and got.headers["content-type"] == "video/mp4"


def test_files_support_range_requests(api, media):
    url = upload(api, media["c0_5"])
    data = media["c0_5"].read_bytes()
    part = httpx.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == data[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"
    assert httpx.get(url.rsplit("/", 1)[0] + "/other.mp4").status_code == 404


def test_multipart_upload(api):
    data = bytes(range(256)) * 1000
    start = api.post(
        "/files/upload/multipart", headers={"Content-Type": "application/zip", "X-Fal-File-Name": "big.zip"}
    )
    access, upload_id = start.json()["access_url"], start.json()["uploadId"]
    parts = []
    for n, chunk in enumerate((data[:100_000], data[100_000:200_000], data[200_000:]), start=1):
        resp = api.put(f"{access}/multipart/{upload_id}/{n}", content=chunk)
        parts.append({"partNumber": n, "etag": resp.headers["etag"]})
    assert httpx.get(access).status_code == 404  # not served before completion
    # listed out of order, as fal-client's parallel uploads list them
    done = api.post(f"{access}/multipart/{upload_id}/complete", json={"parts": parts[::-1]})
    assert done.status_code == 200 and done.json()["access_url"] == access
    assert httpx.get(access).content == data
    assert all(p["etag"].startswith('"') for p in parts)


def test_multipart_refuses_missing_parts(api):
    start = api.post("/files/upload/multipart", headers={"X-Fal-File-Name": "x.bin"}).json()
    api.put(f"{start['access_url']}/multipart/{start['uploadId']}/2", content=b"b")
    resp = api.post(
        f"{start['access_url']}/multipart/{start['uploadId']}/complete",
        json={"parts": [{"partNumber": 2, "etag": "x"}]},
    )
    assert resp.status_code == 400 and httpx.get(start["access_url"]).status_code == 404


def test_initiate_then_put_upload(api):
    init = api.post(
        "/storage/upload/initiate",
        params={"storage_type": "gcs"},
        json={"file_name": "notes.txt", "content_type": "text/plain"},
    ).json()
    assert httpx.get(init["file_url"]).status_code == 404  # nothing until the PUT
    assert httpx.put(init["upload_url"], content=b"hello", headers={"Content-Type": "text/plain"}).status_code == 200
    assert httpx.get(init["file_url"]).content == b"hello"


# ---------------------------------------------------------------------- platform API


def test_pricing_api_gives_one_unit_price_per_endpoint(api):
    ids = ["luma/agent/ray/v3.2/reframe", "fal-ai/luma-dream-machine/ray-2"]
    resp = api.get("/v1/models/pricing", params={"endpoint_id": ",".join(ids)}).json()
    assert resp["has_more"] is False
    assert [(p["endpoint_id"], p["unit"], Decimal(str(p["unit_price"]))) for p in resp["prices"]] == [
        (ids[0], "second", Decimal("0.06")),
        (ids[1], "video", Decimal("0.5")),
    ]
    repeated = api.get("/v1/models/pricing", params=[("endpoint_id", ids[0]), ("endpoint_id", ids[1])]).json()
    assert repeated["prices"] == resp["prices"]
    assert api.get("/v1/models/pricing").status_code == 422
    assert api.get("/v1/models/pricing", params={"endpoint_id": "x/y"}).status_code == 404


def test_pricing_estimate(api):
    unit = api.post(
        "/v1/models/pricing/estimate",
        json={"estimate_type": "unit_price", "endpoints": {"luma/agent/ray/v3.2/reframe": {"unit_quantity": 50}}},
    ).json()
    assert unit == {"estimate_type": "unit_price", "total_cost": 3.0, "currency": "USD"}
    hist = api.post(
        "/v1/models/pricing/estimate",
        json={"estimate_type": "historical_api_price", "endpoints": {T2V: {"call_quantity": 3}}},
    ).json()
    assert hist["total_cost"] == 1.5  # no history yet: the unit price per call
    assert api.post("/v1/models/pricing/estimate", json={"estimate_type": "guess"}).status_code == 422


def test_usage_api_sums_the_ledger_by_bucket_and_endpoint(api, media):
    url = upload(api, media["c5"])
    for res in ("540p", "1080p"):
        body = submit(
            api,
            "luma/agent/ray/v3.2/reframe",
            {"prompt": "p", "video_url": url, "aspect_ratio": "1:1", "resolution": res},
        )
        wait_done(api, body["status_url"])
    body = submit(api, T2V, {"prompt": "q"})
    wait_done(api, body["status_url"])
    [bucket] = usage(api, timeframe="hour")["time_series"]
    rows = {r["endpoint_id"]: r for r in bucket["results"]}
    reframe = rows["luma/agent/ray/v3.2/reframe"]
    assert (reframe["unit"], reframe["quantity"], reframe["unit_price"]) == ("second", 5 + 30, 0.06)
    assert Decimal(str(reframe["cost"])) == Decimal("0.30") + Decimal("1.80")
    assert rows[T2V]["cost"] == 0.5
    only = usage(api, endpoint_id=T2V)["time_series"][0]["results"]
    assert [r["endpoint_id"] for r in only] == [T2V]
    future = usage(api, start="2099-01-01T00:00:00Z", end="2099-01-02T00:00:00Z")
    assert future["time_series"] == []


def test_usage_api_can_require_an_admin_key(emulator_factory):
    server = emulator_factory(admin_keys=frozenset({"admin"}))
    query = {"endpoint_id": T2V, "expand": "time_series"}
    plain = httpx.get(f"{server.url}/v1/models/usage", params=query, headers={"Authorization": "Key user"})
    admin = httpx.get(f"{server.url}/v1/models/usage", params=query, headers={"Authorization": "Key admin"})
    assert plain.status_code == 403 and plain.json() == {
        "error": {"type": "authorization_error", "message": "Access denied"}
    }
    assert admin.status_code == 200


# ---------------------------------------------------------------------- webhooks


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[Any, ...]]] = []
    fail_first = 0

    def do_POST(self):  # http.server's name for the POST handler
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((dict(self.headers), body))
        if type(self).fail_first > 0:
            type(self).fail_first -= 1
            self.send_response(500)
        else:
            self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    handler = type("R", (_Receiver,), {"received": [], "fail_first": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


def _verify(jwks: dict, headers: dict, body: bytes) -> bool:
    h = {k.lower(): v for k, v in headers.items()}
    message = "\n".join(
        [
            h["x-fal-webhook-request-id"],
            h["x-fal-webhook-user-id"],
            h["x-fal-webhook-timestamp"],
            hashlib.sha256(body).hexdigest(),
        ]
    ).encode()
    for key in jwks["keys"]:
        raw = base64.urlsafe_b64decode(key["x"] + "=" * (-len(key["x"]) % 4))
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(bytes.fromhex(h["x-fal-webhook-signature"]), message)
            return True
        except Exception:  # noqa: BLE001
            continue
    return False


def _wait_for(predicate, polls: int = 3000):
    for _ in range(polls):
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition never held")


def test_webhook_is_signed_and_carries_the_output(api, receiver):
    handler, hook = receiver
    body = submit(api, T2V, {"prompt": "hook"}, fal_webhook=hook)
    _wait_for(lambda: handler.received)
    headers, raw = handler.received[0]
    jwks = api.get("/.well-known/jwks.json").json()
    assert jwks["keys"][0]["kty"] == "OKP" and jwks["keys"][0]["crv"] == "Ed25519"
    assert _verify(jwks, headers, raw)
    assert not _verify(jwks, headers, raw + b" ")  # a changed body fails
    assert abs(int(headers["X-Fal-Webhook-Timestamp"]) - time.time()) < 300
    payload = json.loads(raw)
    assert payload["request_id"] == payload["gateway_request_id"] == body["request_id"]
    assert payload["status"] == "OK" and payload["payload"]["video"]["url"].endswith(".mp4")


def test_webhook_reports_errors_and_is_retried(emulator_factory, receiver):
    handler, hook = receiver
    handler.fail_first = 1
    server = emulator_factory(faults="refuse=1")
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Key {EMU_KEY}"}, timeout=30) as api:
        submit(api, T2V, {"prompt": "bad"}, fal_webhook=hook)
        _wait_for(lambda: len(handler.received) >= 2)
        payload = json.loads(handler.received[1][1])
        assert payload["status"] == "ERROR" and payload["error"] == "Invalid status code: 422"
        assert payload["payload"]["detail"][0]["type"] == "content_policy_violation"
        # the emulator logs an attempt once our receiver's answer is back, a moment after it arrived
        _wait_for(lambda: len(api.get("/_emulator/requests").json()["webhooks"]) >= 2)
        attempts = api.get("/_emulator/requests").json()["webhooks"]
        assert [a["status_code"] for a in attempts] == [500, 200]


# ---------------------------------------------------------------------- outputs of every endpoint


def _probe(url: str, tmp_path: Path) -> tuple[int, int, Decimal, bool]:
    target = tmp_path / hashlib.sha256(url.encode()).hexdigest()[:12]
    target.write_bytes(httpx.get(url).content)
    info = json.loads(
        subprocess.run(
            ["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(target)], capture_output=True, check=True
        ).stdout
    )
    v = next(s for s in info["streams"] if s["codec_type"] == "video")
    return v["width"], v["height"], Decimal(v["duration"]), any(s["codec_type"] == "audio" for s in info["streams"])


def _inputs(ep: catalog.Endpoint, video: str, image: str) -> dict:
    payload: dict = {}
    for f in ep.fields:
        if f.required or f.media:
            if f.media == "video":
                payload[f.name] = video
            elif f.media == "image" and f.type == "string":
                payload[f.name] = image
            elif f.name == "prompt":
                payload[f.name] = f"a test of {ep.alias}"
            elif f.type == "enum":
                payload[f.name] = f.enum[-1]
    if "resolution" in ep.field_map:
        payload["resolution"] = "540p"
    if "duration" in ep.field_map:
        payload["duration"] = ep.durations[-1]
    return payload


@pytest.mark.parametrize("alias", [e.alias for e in catalog.ENDPOINTS])
def test_every_endpoint_renders_the_promised_size_and_length(api, media, tmp_path, alias):
    ep = catalog.endpoint(alias)
    video, image = upload(api, media["c5"]), upload(api, media["image"], "image/png")
    payload = _inputs(ep, video, image)
    body = submit(api, ep.id, payload)
    done = wait_done(api, body["status_url"])
    assert "error" not in done, done
    result = api.get(body["response_url"])
    width, height, duration, has_audio = _probe(result.json()["video"]["url"], tmp_path)
    spec = catalog.expected_output(ep, payload, (64, 36), Decimal(5))
    assert (width, height) == (spec.width, spec.height)
    assert abs(duration - spec.duration) <= Decimal("0.2")
    assert (
        min(width, height)
        == catalog.RESOLUTION_SHORT_SIDE_PX[
            ep.with_defaults(payload).get("resolution", catalog.DEFAULT_OUTPUT_RESOLUTION)
        ]
    )
    if ep.output_aspect == "param":
        aw, ah = catalog.parse_aspect(payload.get("aspect_ratio") or ep.with_defaults(payload)["aspect_ratio"])
        assert abs(width / height - aw / ah) < 0.01
    else:
        assert abs(width / height - 64 / 36) < 0.01
    assert has_audio is (ep.source_kind == "video" and ep.family in ("reframe", "video-to-video", "modify"))


# ---------------------------------------------------------------------- time model


def _run_three(api) -> None:
    for prompt in ("one", "two", "three"):
        wait_done(api, submit(api, T2V, {"prompt": prompt})["status_url"])


def test_instant_mode_renders_each_shape_once(emulator_factory):
    instant = emulator_factory(instant=True)
    normal = emulator_factory()
    for server, renders in ((instant, 1), (normal, 3)):
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Key {EMU_KEY}"}, timeout=30) as api:
            _run_three(api)
            health = api.get("/_emulator/health").json()
            assert health["renders"] == renders and health["instant"] is (server is instant)


def test_identical_requests_reuse_one_render(api):
    for _ in range(2):
        wait_done(api, submit(api, T2V, {"prompt": "same"})["status_url"])
    assert api.get("/_emulator/health").json()["renders"] == 1


def test_requests_arriving_together_probe_a_stored_source_once(emulator_factory, media):
    """A batch sends dozens of jobs per source at once. Each used to start its own ffprobe of the
    same stored file before the first had finished, which made the emulator, not the client, the
    bottleneck of every load benchmark."""
    server = emulator_factory(instant=True)
    reframe = "fal-ai/luma-dream-machine/ray-2-flash/reframe"
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Key {EMU_KEY}"}, timeout=30) as api:
        url = upload(api, media["c0_5"])
        bodies = [
            submit(api, reframe, {"video_url": url, "aspect_ratio": "9:16", "grid_position_x": x}) for x in range(12)
        ]
        for body in bodies:
            assert "error" not in wait_done(api, body["status_url"])
        health = api.get("/_emulator/health").json()
    assert health["probes"] == 1 and health["renders"] == 1
