"""`prune`: retention. Finished jobs' attempts and events older than a horizon go, their report
figures stay in daily rollups, old probe-cache rows go; job rows stay, so an enqueue still knows
a job was done and paid for (never pay twice)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .db import prune as db_prune
from .db.repo import Repository
from .errors import DatabaseError

_AGE = re.compile(r"^\s*(\d+)\s*([hdw])\s*$")
_UNIT_S = {"h": 3600, "d": 86_400, "w": 7 * 86_400}


def parse_age(text: str) -> timedelta:
    """`90d`, `12w`, `36h` as a duration; ValueError for anything else, or zero."""
    m = _AGE.match(text.lower())
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"{text!r} is not an age like 90d, 12w or 36h")
    return timedelta(seconds=int(m.group(1)) * _UNIT_S[m.group(2)])


@dataclass(frozen=True)
class PruneResult:
    horizon: datetime
    dry_run: bool
    counts: db_prune.PruneCounts
    vacuumed: bool  # SQLite was compacted afterwards
    vacuum_failed: str | None = None  # why compaction did not happen (the prune itself is committed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "horizon": self.horizon.isoformat(),
            "dry_run": self.dry_run,
            "jobs_rolled_up": self.counts.jobs,
            "attempts": self.counts.attempts,
            "events": self.counts.events,
            "probes": self.counts.probes,
            "vacuumed": self.vacuumed,
            "vacuum_failed": self.vacuum_failed,
        }


def prune(repo: Repository, older_than: timedelta, *, dry_run: bool, now: datetime | None = None) -> PruneResult:
    """Remove (or, dry, count) what is older than `older_than`; compact SQLite afterwards."""
    horizon = (now or datetime.now(UTC)) - older_than
    if dry_run:
        return PruneResult(horizon, True, db_prune.count(repo.engine, horizon), False)
    counts = db_prune.prune(repo.engine, horizon)
    if not (counts.jobs or counts.events or counts.probes):
        return PruneResult(horizon, False, counts, False)
    try:
        return PruneResult(horizon, False, counts, db_prune.vacuum(repo.engine))
    except DatabaseError as err:  # e.g. a worker's long read held the file: the prune stands
        return PruneResult(horizon, False, counts, False, err.message)
