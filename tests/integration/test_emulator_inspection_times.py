"""The emulator's inspection (/_emulator/requests) times each accepted request: when it was received,
started and completed (batch_runner/emulator/queue.py `inspection`); bench/bench_scale.py's breakdown
of the time above fal's floor is read from these."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx

from tests.conftest import EMU_KEY
from tests.integration.emu_helpers import requests_log, submit, wait_done, wait_state

T2V = "luma/agent/ray/v3.2/text-to-video"


def _at(stamp: str) -> datetime:
    when = datetime.fromisoformat(stamp)
    assert when.tzinfo is not None, stamp
    return when


def test_a_completed_request_lists_when_it_was_received_started_and_completed(api: httpx.Client) -> None:
    body = submit(api, T2V, {"prompt": "timed"})
    assert wait_done(api, body["status_url"])["status"] == "COMPLETED"
    [row] = requests_log(api)["requests"]
    assert row["request_id"] == body["request_id"] and row["state"] == "COMPLETED"
    assert _at(row["received_at"]) <= _at(row["started_at"]) <= _at(row["completed_at"])


def test_a_request_still_queued_lists_no_start_or_completion(emulator_factory: Callable[..., Any]) -> None:
    server = emulator_factory(speed=20, concurrency=1)  # one at a time: the second waits for the first
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Key {EMU_KEY}"}, timeout=30) as api:
        first = submit(api, T2V, {"prompt": "first"})
        second = submit(api, T2V, {"prompt": "second"})
        wait_state(api, first["status_url"], "IN_PROGRESS")
        rows = {r["request_id"]: r for r in requests_log(api)["requests"]}
        assert api.get(second["status_url"]).json()["status"] == "IN_QUEUE"
        assert (rows[second["request_id"]]["started_at"], rows[second["request_id"]]["completed_at"]) == (None, None)
        assert _at(rows[first["request_id"]]["received_at"]) <= _at(rows[first["request_id"]]["started_at"])
        api.put(second["cancel_url"])
        api.put(first["cancel_url"])
