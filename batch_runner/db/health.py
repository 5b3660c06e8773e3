"""The database's side of `health` besides the schema revision (engine.stored_revision): jobs
whose lease ran out long ago (a worker claimed them and died, and no live worker swept them)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, func, select
from sqlalchemy.engine import Connection

from .engine import create
from .models import Job, table
from .plumbing import Plumbing, reading

J = table(Job)
MAX_OWNERS_SHOWN = 3


@dataclass(frozen=True)
class StaleLeases:
    """Jobs still held by a worker whose lease ended more than one lease time ago."""

    jobs: int
    owners: tuple[str, ...]  # at most MAX_OWNERS_SHOWN of them
    oldest_expiry: datetime | None


def stale_leases(engine: Engine, lease_s: float) -> StaleLeases:
    """Leased jobs whose lease expired more than `lease_s` seconds ago: a live worker renews its
    leases every few seconds and any claim sweeps expired ones, so these mean no worker runs."""

    def go(conn: Connection) -> StaleLeases:
        before = Plumbing._clock(conn) - timedelta(seconds=lease_s)  # the clock leases are set by
        stale = [J.c.lease_owner.is_not(None), J.c.lease_expires_at < before]
        count, oldest = conn.execute(select(func.count(), func.min(J.c.lease_expires_at)).where(*stale)).one()
        owners = conn.execute(
            select(J.c.lease_owner)
            .where(*stale)
            .group_by(J.c.lease_owner)
            .order_by(J.c.lease_owner)
            .limit(MAX_OWNERS_SHOWN)
        ).scalars()
        return StaleLeases(int(count), tuple(owners), _aware(oldest))

    return reading(engine, "looking for stale leases", go)


def _aware(when: datetime | None) -> datetime | None:
    if when is not None and when.tzinfo is None:  # SQLite's aggregate skips the column type
        return when.replace(tzinfo=UTC)
    return when


def stale_leases_at(url: str, lease_s: float) -> StaleLeases:
    """`stale_leases` of the database at `url`, on an engine of its own that is closed after:
    nothing is created or migrated (check the schema with engine.stored_revision first)."""
    engine = create(url)
    try:
        return stale_leases(engine, lease_s)
    finally:
        engine.dispose()
