"""Use case: the report's line items (`report --items`), one per attempt in scope and one per job
never tried, made as the ledger streams by: 100,000 jobs make 100,000 lines, never held together."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from .db.ledger import Scope, attempt_days
from .db.prune import rollup_totals
from .db.repo import Repository
from .domain import AttemptState, format_usd
from .jsontext import list_pieces
from .records import AttemptRecord, JobRecord
from .reports import Report, check, day_range, finish, fold, start

ITEM_COLUMNS = (
    "row_type",
    "batch",
    "project",
    "job_id",
    "job_key",
    "endpoint",
    "source",
    "params",
    "tags",
    "job_state",
    "job_estimate_usd",
    "attempt",
    "request_id",
    "attempt_state",
    "reserved_usd",
    "billed_usd",
    "billed_source",
    "delivered_seconds",
    "error_type",
    "created_at",
    "submitted_at",
    "finished_at",
    "output",
)


def _usd(micro: int | None) -> str | None:
    return format_usd(micro) if micro is not None else None


def _iso(when: datetime | None) -> str | None:
    return when.astimezone(UTC).isoformat() if when else None


def _item(job: JobRecord, a: AttemptRecord | None) -> dict[str, Any]:
    """One line: a job and one of its attempts (or none: the attempt's fields are empty)."""
    delivered = a.duration_us if a and a.state == AttemptState.SUCCEEDED and a.duration_us else None
    return {
        "row_type": "item",
        "batch": job.batch,
        "project": job.project,
        "job_id": job.id,
        "job_key": job.key,
        "endpoint": job.endpoint,
        "source": job.source,
        "params": job.params,
        "tags": list(job.tags),
        "job_state": job.state.value,
        "job_estimate_usd": format_usd(job.estimate_micro_usd),
        "attempt": a.number if a else None,
        "request_id": a.request_id if a else None,
        "attempt_state": a.state.value if a else None,
        "reserved_usd": _usd(a.reserved_micro_usd) if a else None,
        "billed_usd": _usd(a.billed_micro_usd) if a else None,
        "billed_source": a.price_source if a else None,
        "delivered_seconds": f"{Decimal(delivered) / 1_000_000:f}" if delivered else None,
        "error_type": a.error_type if a else None,
        "created_at": _iso(a.created_at if a else job.created_at),
        "submitted_at": _iso(a.submitted_at) if a else None,
        "finished_at": _iso(a.finished_at) if a else None,
        "output": job.output_path,
    }


def items(job: JobRecord, attempts: list[AttemptRecord]) -> list[dict[str, Any]]:
    """A job's line items: one per attempt in scope, or one of its own when it has none."""
    return [_item(job, a) for a in attempts] if attempts else [_item(job, None)]


def item_totals(report: Report, lines: int) -> dict[str, Any]:
    """The totals of the line items: the report's own total figures (estimates once per job)."""
    t = report.total.as_dict()
    return {
        "row_type": "total",
        "lines": lines,
        "jobs": t["jobs"],
        "attempts": report.attempts,
        "job_estimate_usd": t["estimated_usd"],
        "reserved_usd": format_usd(report.reserved),
        "billed_usd": t["billed_usd"],
        "unconfirmed_usd": t["unconfirmed_usd"],
        "delivered_seconds": t["delivered_seconds"],
    }


def line_items(repo: Repository, scope: Scope, fmt: str) -> Iterator[str]:
    """`report --items` as pieces of text, made as the ledger streams by (100,000 jobs make
    100,000 lines, never held together): JSON {"scope": ..., "items": [...], "totals": {...}};
    CSV one line per item, then one line whose `row_type` is "total" (filter on it in a
    spreadsheet). The scope is `check`ed before the first piece."""
    if fmt not in ("json", "csv"):
        raise ValueError(f"{fmt!r} is not a line-item format (json, csv)")
    check(repo, scope)
    return _json_items(repo, scope) if fmt == "json" else _csv_items(repo, scope)


CHUNK_LINES = 1000  # line items handed on at a time


def _csv_items(repo: Repository, scope: Scope) -> Iterator[str]:
    report = start(repo, scope, "endpoint")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(ITEM_COLUMNS)
    count = held = 0
    for job, attempts in fold(repo, report):
        for line in items(job, attempts):
            writer.writerow(_csv_row(line))
            count, held = count + 1, held + 1
        if held >= CHUNK_LINES:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
            held = 0
    finish(report, datetime.now(UTC), rollup_totals(repo.engine, scope))
    writer.writerow([_cell(c, item_totals(report, count).get(c)) for c in ITEM_COLUMNS])
    yield buf.getvalue()


def _json_items(repo: Repository, scope: Scope) -> Iterator[str]:
    """The text json.dumps(indent=2) makes of {"scope", "items", "totals"}, an item at a time.
    The scope's first and last day come first: from the attempts' first and last day in SQL."""
    report, now, rollups = start(repo, scope, "endpoint"), datetime.now(UTC), rollup_totals(repo.engine, scope)
    days = [d for d in attempt_days(repo.engine, scope) if d is not None] + [r.day for r in rollups]
    report.first_day, report.last_day = day_range(scope, min(days, default=None), max(days, default=None), now)
    yield "{\n" + _member("scope", report.scope_dict()) + ',\n  "items": '
    count = [0]

    def lines() -> Iterator[dict[str, Any]]:
        for job, attempts in fold(repo, report):
            for line in items(job, attempts):
                count[0] += 1
                yield line

    yield from list_pieces(lines(), "  ", _dumps, CHUNK_LINES)
    finish(report, now, rollups)
    yield ",\n" + _member("totals", item_totals(report, count[0])) + "\n}\n"


def _member(key: str, value: Any) -> str:
    """One member of a top-level object as json.dumps(indent=2) writes it."""
    return f"  {json.dumps(key)}: " + _dumps(value).replace("\n", "\n  ")


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2)


_PARAMS, _TAGS = ITEM_COLUMNS.index("params"), ITEM_COLUMNS.index("tags")


def _csv_row(line: dict[str, Any]) -> list[Any]:
    """An item's CSV cells as `_cell` makes them, faster: the csv module writes None as "" and
    an int as str() does."""
    row = list(map(line.get, ITEM_COLUMNS))
    row[_PARAMS] = _cell("params", line["params"])
    row[_TAGS] = _cell("tags", line["tags"])
    return row


def _cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if column == "params":
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    if column == "tags":
        return ";".join(value)
    return str(value)
