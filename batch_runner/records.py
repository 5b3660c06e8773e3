"""Rows as they leave db/: frozen records built once from a row, their JSON columns parsed once
(procrastinate's `Job.from_row`). A change makes a new record (`evolve`), never edits one."""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Self

from .domain import AttemptState, JobState, format_usd


def _pick(cls: type[Any], row: Mapping[Any, Any], parsed: dict[str, Any]) -> dict[str, Any]:
    """The record's fields from a row: every field without a default must be in it (a query that
    forgot a column fails here, not later); a field with a default may be absent (a joined extra)."""
    out = dict(parsed)
    for f in dataclasses.fields(cls):
        if f.name in out:
            continue
        if f.name in row:
            out[f.name] = row[f.name]
        elif f.default is dataclasses.MISSING:
            raise KeyError(f"{cls.__name__}: the row has no column {f.name!r}")
    return out


def _json_field(name: str, value: Any) -> tuple[str, Any]:
    """One field as the JSON of `show --json` carries it: money as a decimal string under `*_usd`,
    times as ISO 8601 UTC, states as their names, tuples as lists, durations as seconds."""
    if name.endswith("_micro_usd"):
        return name.removesuffix("_micro_usd") + "_usd", None if value is None else format_usd(value)
    if name.endswith("_us"):
        return name.removesuffix("_us") + "_s", None if value is None else f"{Decimal(value).scaleb(-6).normalize():f}"
    if isinstance(value, datetime):  # SQLite hands back naive datetimes; every stored time is UTC
        return name, (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
    if isinstance(value, enum.Enum):
        return name, value.value
    if isinstance(value, tuple):
        return name, list(value)
    return name, value


class _Record:
    __slots__ = ()

    def evolve(self, **changes: Any) -> Self:
        """A copy with `changes` applied (the record itself stays as it was)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]  # every subclass is a dataclass

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-ready values, one key per field (see `_json_field` for the shapes);
        JSON columns (params, details, summary) are objects, never strings inside JSON."""
        fields = dataclasses.fields(self)  # type: ignore[arg-type]  # every subclass is a dataclass
        return dict(_json_field(f.name, getattr(self, f.name)) for f in fields)


@dataclass(frozen=True, slots=True)
class JobRecord(_Record):
    """One row of `jobs`; `params` is the model input (its `input_json`), `tags` its tag list."""

    id: int
    key: str
    batch_id: int
    endpoint: str
    source: str | None
    source_fingerprint: str | None
    media_field: str | None
    params: dict[str, Any]
    output_path: str
    output_root: str | None
    state: JobState
    estimate_micro_usd: int
    billable_units: str
    unit: str
    price_table: str
    price_verified: bool
    tags: tuple[str, ...]
    origin: str | None
    attempt_count: int
    retry_base: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    next_attempt_at: datetime | None
    last_error: str | None
    billed_micro_usd: int | None
    created_at: datetime
    updated_at: datetime
    batch: str | None = None  # the batch's name, when the query joined it
    project: str | None = None  # the manifest's project (cost centre), if it named one
    pruned_at: datetime | None = None  # `prune` moved its attempts into the rollups

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> JobRecord:
        parsed = {
            "params": json.loads(row["input_json"]),
            "tags": tuple(json.loads(row["tags_json"] or "[]")),
            "state": JobState(row["state"]),
            "retry_base": row.get("retry_base") or 0,
        }
        return cls(**_pick(cls, row, parsed))

    @property
    def input_json(self) -> str:
        """The model input as stored (canonical JSON)."""
        return json.dumps(self.params, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class JobOutline:
    """What `plan --diff` compares of a stored job: a few columns of its row, for a whole batch."""

    key: str
    output_path: str
    state: JobState
    estimate_micro_usd: int
    source: str | None


@dataclass(frozen=True, slots=True)
class AttemptRecord(_Record):
    """One row of `attempts`: one try at a job, with its request id and money."""

    id: int
    job_id: int
    number: int
    batch_id: int | None
    run_id: int | None
    worker: str | None
    state: AttemptState
    request_id: str | None
    status_url: str | None
    response_url: str | None
    cancel_url: str | None
    reserved_micro_usd: int | None
    billed_micro_usd: int | None
    billable_units: str | None
    unit_price_micro_usd: int | None
    price_source: str | None
    error: str | None
    error_type: str | None
    input_sha256: str | None
    sent_at: datetime | None
    output_url: str | None
    settled_run_id: int | None
    created_at: datetime
    submitted_at: datetime | None
    finished_at: datetime | None
    endpoint: str | None = None  # the job's endpoint, when the query joined it
    duration_us: int | None = None  # the delivered output's duration, when the query joined it

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> AttemptRecord:
        return cls(**_pick(cls, row, {"state": AttemptState(row["state"])}))


@dataclass(frozen=True, slots=True)
class RunRecord(_Record):
    """One row of `runs`: a named run, its budgets, what it has committed, and its summary."""

    id: int
    name: str
    batch_id: int | None
    budget_micro_usd: int | None
    daily_budget_micro_usd: int | None
    warn_at_micro_usd: int | None
    reserved_micro_usd: int
    warned: bool
    status: str
    started_at: datetime
    finished_at: datetime | None
    host: str
    pid: int
    summary: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> RunRecord:
        summary = row["summary_json"]
        parsed = {"summary": json.loads(summary) if summary else None, "warned": bool(row["warned"])}
        return cls(**_pick(cls, row, parsed))


@dataclass(frozen=True, slots=True)
class EventRecord(_Record):
    """One row of the audit trail."""

    id: int
    at: datetime
    batch_id: int | None
    job_id: int | None
    attempt_id: int | None
    host: str
    pid: int
    user: str
    kind: str
    from_state: str | None
    to_state: str | None
    details: dict[str, Any]

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> EventRecord:
        return cls(**_pick(cls, row, {"details": json.loads(row["details_json"] or "{}")}))


__all__ = ["AttemptRecord", "EventRecord", "JobOutline", "JobRecord", "RunRecord"]
