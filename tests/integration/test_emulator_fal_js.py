"""Conformance: fal's official JavaScript client (@fal-ai/client, pinned in tests/js/package.json)
against the emulator on a real port. `make test` installs it (`npm ci --prefix tests/js`).

Each test runs one scenario of tests/js/fal_check.mjs in Node and asserts on what the client saw.
Where the client and the emulator disagree, the emulator is wrong until proven otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, skip_or_fail

JS = REPO / "tests" / "js"
T2V = "luma/agent/ray/v3.2/text-to-video"


@pytest.fixture(scope="module")
def node() -> str:
    exe = shutil.which("node")
    if exe is None:
        skip_or_fail("node is not installed")
    if not (JS / "node_modules" / "@fal-ai" / "client" / "package.json").exists():
        skip_or_fail("@fal-ai/client is not installed: run `make test` or `npm ci --prefix tests/js`")
    return str(exe)


def run_js(node: str, scenario: str, emu: Any, media: Path | None = None) -> dict[str, Any]:
    env = {**os.environ, "EMU_URL": emu.url, "MEDIA": str(media or "")}
    proc = subprocess.run(
        [node, str(JS / "fal_check.mjs"), scenario], env=env, capture_output=True, text=True, timeout=240, cwd=JS
    )
    assert proc.stdout.strip(), f"no output from the {scenario} scenario; stderr: {proc.stderr[-2000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ok"] and proc.returncode == 0, json.dumps(out, indent=1)[:4000]
    return out


def test_upload_single_part(node, emu, media):
    out = run_js(node, "upload", emu, media["c5"])
    assert out["got"] == {"status": 200, **out["sent"]}
    assert out["requests"][0] == "POST /storage/upload/initiate?storage_type=fal-cdn-v3"


def test_upload_multipart_above_90_mib(node, emu):
    out = run_js(node, "upload_multipart", emu)
    assert out["got"] == {"status": 200, **out["sent"]}
    assert out["requests"][0] == "POST /storage/upload/initiate-multipart?storage_type=fal-cdn-v3"


def test_submit_status_stream_status_and_result(node, emulator_factory):
    # a slower emulator with quick keep-alives: comment lines arrive between the status events
    emu = emulator_factory(speed=50, keepalive_s=0.05)
    out = run_js(node, "queue", emu)
    rid = out["submitted"]["request_id"]
    assert out["submitted"]["status_url"] == f"{emu.url}/luma/agent/requests/{rid}/status"
    assert out["streamed"][-1] == "COMPLETED" and out["done"] == "COMPLETED"
    assert out["after"]["logs"] and "error" not in out["after"]
    assert out["result"]["requestId"] == rid and out["result"]["video"]["content_type"] == "video/mp4"
    assert f"GET /luma/agent/requests/{rid}/status/stream?logs=1" in out["requests"]


def test_cancel_queued_and_running_requests(node, emulator_factory):
    emu = emulator_factory(speed=5, concurrency=1)
    out = run_js(node, "cancel", emu)
    assert out["queuedBefore"]["status"] == "IN_QUEUE"
    for end in out["ends"].values():
        # https://fal.ai/docs/documentation/model-apis/request-errors: client_cancelled, 499
        assert end["status"]["status"] == "COMPLETED" and end["status"]["error_type"] == "client_cancelled"
        assert end["result"]["isApiError"] and end["result"]["status"] == 499
        assert end["result"]["body"]["error_type"] == "client_cancelled"
    assert out["again"]["status"] == 400 and out["again"]["body"] == {"status": "ALREADY_COMPLETED"}
    log = httpx.get(f"{emu.url}/_emulator/requests", timeout=30).json()["requests"]
    assert {r["state"] for r in log} == {"CANCELLED"} and all(r["cost_usd"] is None for r in log)


def test_subscribe_polling(node, emu, media):
    out = run_js(node, "subscribe_polling", emu, media["c5"])
    assert out["video"]["url"].startswith(emu.url) and out["requestId"]
    assert {u["status"] for u in out["updates"]} <= {"IN_QUEUE", "IN_PROGRESS", "COMPLETED"}
    assert out["updates"][-1]["status"] == "COMPLETED"


def test_subscribe_streaming_uploads_a_file_input_and_collects_each_log_once(node, emulator_factory, media):
    emu = emulator_factory(speed=50, keepalive_s=0.05)
    out = run_js(node, "subscribe_streaming", emu, media["c5"])
    assert out["video"]["url"].startswith(emu.url) and out["requestId"]
    assert out["requests"][0] == "POST /storage/upload/initiate?storage_type=fal-cdn-v3"
    # fal-js accumulates the logs of streamed events (queue.ts): each entry arrives once
    status = httpx.get(
        f"{emu.url}/fal-ai/luma-dream-machine/requests/{out['requestId']}/status",
        params={"logs": 1},
        headers={"Authorization": "Key k"},
        timeout=30,
    ).json()
    assert out["updates"][-1] == {"status": "COMPLETED", "logs": len(status["logs"])}


def test_a_validation_error_is_a_validation_error(node, emu):
    out = run_js(node, "validation", emu)
    assert out["thrown"] and out["name"] == "ValidationError" and out["isValidationError"] and out["status"] == 422
    fields = {e["loc"][-1]: e["type"] for e in out["fieldErrors"]}
    assert fields == {"aspect_ratio": "enum", "prompt": "missing"}


def test_start_timeout_ends_in_a_user_timeout_the_client_does_not_retry(node, emulator_factory):
    emu = emulator_factory(speed=1, concurrency=1)  # the first request holds the only runner
    out = run_js(node, "start_timeout", emu)
    assert out["done"]["status"] == "COMPLETED" and out["done"]["error_type"] == "request_timeout"
    assert out["result"]["status"] == 504 and out["result"]["isUserTimeout"]
    results = [r for r in out["requests"] if r.endswith(out["done"]["request_id"])]
    assert len(results) == 1  # fal-js retries 504 but never a user timeout (retry.ts isRetryableError)
