"""One emulated request and one billed run: the records the queue keeps and the routes read.

A request moves IN_QUEUE → IN_PROGRESS → COMPLETED (fal has no FAILED: a failed run completes
with `error`). `canonical_hash` names an input (the key of submit faults, upload faults and
shared renders).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from .. import catalog

IN_QUEUE, IN_PROGRESS, COMPLETED = "IN_QUEUE", "IN_PROGRESS", "COMPLETED"


def canonical_hash(endpoint_id: str, payload: dict[str, Any]) -> str:
    """sha256 of the endpoint and its input as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps({"endpoint": endpoint_id, "input": payload}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


@dataclass
class Request:
    """One accepted submission and everything that happened to it."""

    id: str
    endpoint: catalog.Endpoint
    input: dict[str, Any]
    input_hash: str
    received_at: float
    ready_at: float
    webhook_url: str | None
    base_url: str
    state: str = IN_QUEUE
    logs: list[dict[str, Any]] = field(default_factory=list)
    started_at: float | None = None
    completed_at: float | None = None
    output: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None
    result_status: int = 200
    result_body: Any = None
    billable_units: Decimal | None = None
    cost_micro_usd: int | None = None
    cancelled: bool = False
    start_timeout_s: float | None = None  # X-Fal-Request-Timeout: the deadline to start, from receipt
    timed_out: bool = False  # the start deadline passed before it ran: 504, X-Fal-Request-Timeout-Type: user
    expires_at: float | None = None
    version: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def touch(self) -> None:
        """Wake everyone following this request (SSE streams)."""
        self.version += 1
        self.changed.set()
        self.changed = asyncio.Event()

    def log(self, message: str, level: str = "INFO") -> None:
        self.logs.append({"message": message, "level": level, "source": "USER", "timestamp": iso(time.time())})
        self.touch()


@dataclass(frozen=True)
class Billed:
    request_id: str
    endpoint: str
    unit: str
    units: Decimal
    unit_price_micro_usd: int
    cost_micro_usd: int
    at: float
