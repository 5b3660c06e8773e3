"""Uploads to fal's storage as fal does them, runner and emulator over real HTTP: CDN tokens that
expire, fal-js's multipart flow above 90 MiB, and the object lifecycle the runner asks for."""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from batch_runner import uploads
from batch_runner.api import client as client_module
from batch_runner.api.client import FalClient
from batch_runner.config import FalHosts, Secret
from tests.conftest import EMU_KEY
from tests.integration.emu_helpers import submit, wait_done
from tests.integration.run_helpers import make_bench

MIB = 1024 * 1024
FLASH_REFRAME = "fal-ai/luma-dream-machine/ray-2-flash/reframe"


def _state(server):
    """The emulator's own state, for what no fal route shows (tokens issued, how a file was joined)."""
    return server.app.state.emu


def _fal(server) -> FalClient:
    return FalClient(FalHosts.for_url(server.url), Secret(EMU_KEY))


def _file_id(url: str) -> str:
    return httpx.URL(url).path.split("/")[2]


def _small(tmp_path: Path, name: str = "clip.mp4", size: int = 4096) -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


# ---------------------------------------------------------------------- CDN tokens


def test_the_cdn_refuses_an_expired_token_with_401(emulator_factory, tmp_path):
    server = emulator_factory(token_ttl_s=0.5)
    key = {"Authorization": f"Key {EMU_KEY}"}
    token = httpx.post(
        f"{server.url}/storage/auth/token", params={"storage_type": "fal-cdn-v3"}, json={}, headers=key
    ).json()
    expires = datetime.fromisoformat(token["expires_at"])
    assert timedelta(0) < expires - datetime.now(UTC) <= timedelta(seconds=0.5)
    bearer = {"Authorization": f"Bearer {token['token']}", "X-Fal-File-Name": "a.bin"}
    assert httpx.post(f"{server.url}/files/upload", content=b"x", headers=bearer).status_code == 200
    time.sleep(0.6)
    late = httpx.post(f"{server.url}/files/upload", content=b"x", headers=bearer)
    assert late.status_code == 401 and "expired" in late.json()["detail"]
    assert httpx.post(f"{server.url}/files/upload/multipart", headers=bearer).status_code == 401


def test_an_upload_after_the_token_expired_gets_a_new_token_and_succeeds(emulator_factory, tmp_path):
    server = emulator_factory(token_ttl_s=1)
    fal = _fal(server)
    try:
        first = fal.upload(_small(tmp_path, "a.mp4"))
        time.sleep(1.1)
        second = fal.upload(_small(tmp_path, "b.mp4"))
    finally:
        fal.close()
    assert httpx.get(first).status_code == 200 and httpx.get(second).status_code == 200
    assert len(_state(server).cdn_tokens) == 2  # the token endpoint was called again


def test_a_token_the_cdn_refuses_before_its_time_is_replaced_once(emulator_factory, tmp_path, monkeypatch):
    # Our clock runs an hour behind fal's, so by our clock the token is fresh when fal says it
    # has expired: fal's 401 must bring a new token, not stop the run with an AuthError.
    real = client_module._utcnow
    monkeypatch.setattr(client_module, "_utcnow", lambda: real() - timedelta(hours=1))
    server = emulator_factory(token_ttl_s=1)
    fal = _fal(server)
    try:
        fal.upload(_small(tmp_path, "a.mp4"))
        time.sleep(1.1)
        url = fal.upload(_small(tmp_path, "b.mp4"))
    finally:
        fal.close()
    assert httpx.get(url).content == (tmp_path / "b.mp4").read_bytes()
    assert len(_state(server).cdn_tokens) == 2


def test_a_fresh_token_refused_too_fails_that_upload_never_the_key(emulator_factory, tmp_path):
    """The token endpoint took our key; the CDN refusing two tokens in a row is this upload's
    fault, not an AuthError that would stop every worker with exit 9."""
    from batch_runner.api.answers import Phase
    from batch_runner.errors import AuthError, RemoteError
    from batch_runner.outcome import Action, decide

    server = emulator_factory(token_ttl_s=0)  # every token is expired on arrival
    fal = _fal(server)
    try:
        with pytest.raises(RemoteError) as info:
            fal.upload(_small(tmp_path, "a.mp4"))
    finally:
        fal.close()
    assert not isinstance(info.value, AuthError) and "refused a fresh upload token" in info.value.message
    assert decide(Phase.UPLOAD, info.value.reply, exhausted=True).action == Action.FAILED
    assert len(_state(server).cdn_tokens) == 2


# ---------------------------------------------------------------------- fal-js multipart


def test_initiate_multipart_is_served_as_fal_js_drives_it(api, emu):
    data = os.urandom(250_000)
    init = api.post(
        "/storage/upload/initiate-multipart",
        params={"storage_type": "fal-cdn-v3"},
        json={"content_type": "video/mp4", "file_name": "big.mp4"},
    )
    assert init.status_code == 200, init.text
    upload_url, file_url = httpx.URL(init.json()["upload_url"]), init.json()["file_url"]
    assert upload_url.query  # the signed URL's query, which fal-js puts after /{n} and /complete
    parts = []
    for n, chunk in enumerate((data[:100_000], data[100_000:200_000], data[200_000:]), start=1):
        resp = httpx.put(upload_url.copy_with(path=f"{upload_url.path}/{n}"), content=chunk)  # no key, as fal-js
        assert resp.status_code == 200 and resp.json()["partNumber"] == n
        parts.append(resp.json())
    assert httpx.get(file_url).status_code == 404  # nothing before completion
    unsigned = httpx.put(str(upload_url.copy_with(path=f"{upload_url.path}/4", query=None)), content=b"x")
    assert unsigned.status_code == 403
    complete = upload_url.copy_with(path=f"{upload_url.path}/complete")
    wrong = [dict(p, etag='"0000"') if p["partNumber"] == 2 else p for p in parts]
    assert httpx.post(complete, json={"parts": wrong}).status_code == 400
    assert httpx.post(complete, json={"parts": parts}).status_code == 200
    assert httpx.get(file_url).content == data
    assert _state(emu).store.get(_file_id(file_url)).parts == 3


def test_a_95_mib_source_goes_up_in_parts_and_arrives_byte_identical(emulator_factory, tmp_path):
    server = emulator_factory()
    source = tmp_path / "big.mp4"  # the upload path never reads it as video: random bytes will do
    with source.open("wb") as fh:
        for _ in range(95):
            fh.write(os.urandom(MIB))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    fal = _fal(server)
    try:
        url = fal.upload(source, lifetime_s=3600)
    finally:
        fal.close()
    stored = _state(server).store.get(_file_id(url))
    assert stored is not None and stored.parts == 10  # 9 parts of 10 MiB and one of 5 MiB
    assert hashlib.sha256(stored.path.read_bytes()).hexdigest() == digest
    assert hashlib.sha256(httpx.get(url, timeout=60).content).hexdigest() == digest
    assert stored.expires_at is not None and stored.expires_at - time.time() > 3500  # the lifetime asked for
    assert not _state(server).cdn_tokens  # parts go to the signed URL: no CDN token needed


# ---------------------------------------------------------------------- object lifecycle


def test_an_upload_lives_as_long_as_it_asked_and_others_the_default(emulator_factory, tmp_path):
    server = emulator_factory(upload_ttl_s=1)
    fal = _fal(server)
    try:
        kept = fal.upload(_small(tmp_path, "kept.mp4"), lifetime_s=3)
        default = fal.upload(_small(tmp_path, "default.mp4"))
    finally:
        fal.close()
    time.sleep(1.5)
    assert httpx.get(kept).status_code == 200 and httpx.get(default).status_code == 404
    time.sleep(1.7)
    assert httpx.get(kept).status_code == 404


def test_fal_clients_lifecycle_headers_are_honoured(emulator_factory):
    server = emulator_factory(upload_ttl_s=1)
    key = {"Authorization": f"Key {EMU_KEY}"}
    # fal-client's initiate sends -Preference; fal-js's initiate sends X-Fal-Object-Lifecycle
    pref = {"X-Fal-Object-Lifecycle-Preference": json.dumps({"expiration_duration_seconds": 3600}), **key}
    init = httpx.post(f"{server.url}/storage/upload/initiate", json={"file_name": "a.txt"}, headers=pref).json()
    assert httpx.put(init["upload_url"], content=b"hello").status_code == 200
    never = {
        "X-Fal-Object-Lifecycle": json.dumps({"initial_acl": {"default": "allow"}, "expiration_duration_seconds": 0}),
        **key,
    }
    forever = httpx.post(f"{server.url}/files/upload", content=b"x", headers=never).json()["access_url"]
    bad = httpx.post(f"{server.url}/files/upload", content=b"x", headers={"X-Fal-Object-Lifecycle": "7d", **key})
    assert bad.status_code == 422
    time.sleep(1.2)
    assert httpx.get(init["file_url"]).content == b"hello" and httpx.get(forever).status_code == 200


def test_a_request_naming_an_expired_upload_fails_with_file_download_error(emulator_factory, media):
    server = emulator_factory(upload_ttl_s=0.5)
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Key {EMU_KEY}"}, timeout=60) as api:
        url = api.post(
            "/files/upload",
            content=media["c5"].read_bytes(),
            headers={"Content-Type": "video/mp4", "X-Fal-File-Name": "c5.mp4"},
        ).json()["access_url"]
        time.sleep(0.6)
        assert httpx.get(url).status_code == 404
        body = submit(api, FLASH_REFRAME, {"video_url": url, "aspect_ratio": "9:16"})
        done = wait_done(api, body["status_url"])
        assert done["error_type"] == "file_download_error"
        result = api.get(body["response_url"])
        assert result.status_code == 422 and result.json()["detail"][0]["type"] == "file_download_error"
        assert result.json()["detail"][0]["loc"] == ["body", "video_url"]


def test_the_runner_reuses_an_upload_only_while_fal_keeps_it(tmp_path, media, emulator_factory):
    # An account whose retention is a minute: only the lifetime the runner asks for keeps its files.
    server = emulator_factory(upload_ttl_s=60)
    bench = make_bench(tmp_path, media, server)
    assert bench.run().counts == {"succeeded": 4}
    rows = bench.sql("select url, expires_at from uploads")
    assert len(rows) == 2
    for url, reuse_until in rows:
        reuse_until = reuse_until if isinstance(reuse_until, datetime) else datetime.fromisoformat(str(reuse_until))
        reuse_until = reuse_until if reuse_until.tzinfo else reuse_until.replace(tzinfo=UTC)
        stored = _state(server).store.get(_file_id(url))
        fal_until = datetime.fromtimestamp(stored.expires_at, UTC)
        assert reuse_until <= fal_until  # never reused after fal deletes it
        assert fal_until - datetime.now(UTC) > timedelta(seconds=uploads.UPLOAD_LIFETIME_S - 60)
    assert uploads.UPLOAD_TTL_S < uploads.UPLOAD_LIFETIME_S


def test_a_refused_signed_upload_url_starts_over_once_then_fails_the_upload_not_the_key(emulator_factory, tmp_path):
    """A signed URL carries no key of ours: its 403 (expired during a slow upload) restarts the
    multipart upload once, then fails that upload. It is never an AuthError, which would stop
    every worker with exit 9."""
    from batch_runner.api.answers import Phase
    from batch_runner.errors import AuthError, RemoteError
    from batch_runner.outcome import Action, decide

    server = emulator_factory(signed_url_ttl_s=0.0)
    source = tmp_path / "big.mp4"
    with source.open("wb") as fh:
        fh.truncate(91 * MIB)  # sparse: the size is what matters
    fal = _fal(server)
    try:
        with pytest.raises(RemoteError) as info:
            fal.upload(source)
    finally:
        fal.close()
    assert not isinstance(info.value, AuthError) and "signed upload URL was refused" in info.value.message
    assert decide(Phase.UPLOAD, info.value.reply, exhausted=True).action == Action.FAILED
    assert len(_state(server).store._multipart) == 2  # initiated twice: the first URL, then a fresh one
