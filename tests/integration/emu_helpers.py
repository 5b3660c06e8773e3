"""Small helpers for driving the emulator over HTTP in tests."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

POLL_S = 0.02
MAX_POLLS = 3000  # a bound so a broken emulator fails the test instead of hanging it


def upload(api: httpx.Client, path: Path, content_type: str = "video/mp4") -> str:
    resp = api.post(
        "/files/upload", content=path.read_bytes(), headers={"Content-Type": content_type, "X-Fal-File-Name": path.name}
    )
    assert resp.status_code == 200, resp.text
    return resp.json()["access_url"]


def submit(api: httpx.Client, endpoint: str, payload: dict, **params) -> dict:
    resp = api.post(f"/{endpoint}", json=payload, params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()


def wait_done(api: httpx.Client, status_url: str, logs: bool = False) -> dict:
    for _ in range(MAX_POLLS):
        resp = api.get(status_url, params={"logs": 1 if logs else 0})
        if resp.status_code == 200:
            return resp.json()
        assert resp.status_code == 202, resp.text
        time.sleep(POLL_S)
    raise AssertionError(f"{status_url} never completed")


def wait_state(api: httpx.Client, status_url: str, state: str) -> dict:
    for _ in range(MAX_POLLS):
        body = api.get(status_url).json()
        if body["status"] == state:
            return body
        time.sleep(POLL_S)
    raise AssertionError(f"{status_url} never reached {state}")


def requests_log(api: httpx.Client) -> dict:
    return api.get("/_emulator/requests").json()


def usage(api: httpx.Client, **params) -> dict:
    """GET /v1/models/usage as fal documents it: every catalog endpoint id and expand=time_series
    unless given (fal requires both)."""
    from batch_runner import catalog

    query = {"endpoint_id": ",".join(e.id for e in catalog.ENDPOINTS), "expand": "time_series", **params}
    resp = api.get("/v1/models/usage", params=query)
    assert resp.status_code == 200, resp.text
    return resp.json()
