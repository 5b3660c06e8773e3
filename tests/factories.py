"""Frozen records for unit tests that need a job without a database: every column at a plain
default, the test's own values on top."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from batch_runner.records import JobRecord

_AT = datetime(2026, 1, 1, tzinfo=UTC)


def job(id: int = 1, **values: Any) -> JobRecord:
    row: dict[str, Any] = {
        "id": id,
        "key": f"k{id:063d}",
        "batch_id": 1,
        "endpoint": "fal-ai/luma-dream-machine/ray-2-flash/reframe",
        "source": None,
        "source_fingerprint": None,
        "media_field": None,
        "input_json": "{}",
        "output_path": "",
        "output_root": None,
        "state": "queued",
        "estimate_micro_usd": 0,
        "billable_units": "1",
        "unit": "second",
        "price_table": "t@1",
        "price_verified": True,
        "tags_json": "[]",
        "origin": None,
        "attempt_count": 0,
        "retry_base": 0,
        "lease_owner": None,
        "lease_expires_at": None,
        "next_attempt_at": None,
        "last_error": None,
        "billed_micro_usd": None,
        "created_at": _AT,
        "updated_at": _AT,
    }
    return JobRecord.from_row({**row, **values})
