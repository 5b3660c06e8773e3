"""The plumbing under both faces of db/ (the worker's `JobQueue`, the commands' `Repository`):
one write transaction and one read that translate driver errors to `DatabaseError`, one
audit-event insert, one dialect upsert, the dispatch lock, the clock and the lease owner's name."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Engine, bindparam, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from ..domain import Actor
from ..errors import DatabaseError
from ..records import JobRecord
from .engine import safe_url, write_lock
from .models import Batch, Event, Job, Lock, table, utcnow

J = table(Job)
_INSERT_EVENT = insert(Event)  # built once: one or more audit rows go as its parameters
_PENDING_EVENTS = "batch_runner.pending_events"  # Connection.info key: the open transaction's events
# Built once as well (see transition.py): the dispatch lock, the server's clock, and the WHERE term
# that keeps a job query to some batches (their names go as the expanding parameter b_batches).
_TAKE_DISPATCH = update(Lock).where(Lock.name == "dispatch").values(counter=Lock.counter + 1)
_TAKE_DISPATCH_AT = _TAKE_DISPATCH.returning(func.clock_timestamp())  # PostgreSQL: the lock and the clock at once
_SERVER_NOW = select(func.clock_timestamp())


def in_batches(names: Any) -> Any:
    """The WHERE term that keeps a job query to the batches named: a list, or a bound parameter."""
    return J.c.batch_id.in_(select(Batch.id).where(Batch.name.in_(names)))


IN_BATCHES = in_batches(bindparam("b_batches", expanding=True))
_T = TypeVar("_T")


def fail(engine: Engine, action: str, exc: SQLAlchemyError) -> DatabaseError:
    """The one translation of a driver error: what failed, where, and the driver's first line."""
    first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return DatabaseError(
        f"{action} failed on {safe_url(str(engine.url))}: {first[0] if first else type(exc).__name__}",
        hint="nothing was written; check the database and retry",
    )


def transaction(engine: Engine, action: str, fn: Callable[..., _T], *args: Any) -> _T:
    """`fn(conn, *args)` in one write transaction (through the SQLite write lock). The audit
    events it records (`Plumbing._event`) go in one INSERT before the commit: a statement per
    event was a large share of a job's round trips on PostgreSQL."""
    try:
        with write_lock(engine), engine.begin() as conn:
            pending: list[dict[str, Any]] = []
            conn.info[_PENDING_EVENTS] = pending
            try:
                result = fn(conn, *args)
                insert_events(conn, pending)
            finally:
                conn.info.pop(_PENDING_EVENTS, None)  # the info dict outlives the checkout
            return result
    except SQLAlchemyError as exc:
        raise fail(engine, action, exc) from exc


def reading(engine: Engine, action: str, fn: Callable[..., _T], *args: Any) -> _T:
    """`fn(conn, *args)` as a read: no write lock, so idle workers and lookups never queue behind writers."""
    try:
        with engine.connect() as conn:
            return fn(conn, *args)
    except SQLAlchemyError as exc:
        raise fail(engine, action, exc) from exc


def event_row(
    actor: Actor,
    kind: str,
    *,
    at: datetime | None = None,
    batch_id: int | None = None,
    job_id: int | None = None,
    attempt_id: int | None = None,
    from_state: str | None = None,
    to_state: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One row of the audit trail, by this actor."""
    return {
        "at": at or utcnow(),
        "batch_id": batch_id,
        "job_id": job_id,
        "attempt_id": attempt_id,
        "host": actor.host,
        "pid": actor.pid,
        "user": actor.user,
        "kind": kind,
        "from_state": from_state,
        "to_state": to_state,
        "details_json": json.dumps(details or {}, sort_keys=True, default=str),
    }


def insert_events(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """The one insert of audit-trail rows (made by `event_row`)."""
    if rows:
        conn.execute(_INSERT_EVENT, list(rows))


def upsert(dialect: str, model: Any, keys: list[str], update_with: dict[str, Any] | None = None) -> Any:
    """INSERT … ON CONFLICT on either backend: DO NOTHING, or DO UPDATE SET `update_with`."""
    # each dialect's module loads when first used (PostgreSQL's takes about 20 ms to import)
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        stmt: Any = postgresql.insert(model)
    else:
        from sqlalchemy.dialects import sqlite

        stmt = sqlite.insert(model)
    if update_with is None:
        return stmt.on_conflict_do_nothing(index_elements=keys)
    return stmt.on_conflict_do_update(index_elements=keys, set_=update_with)


def pid_namespace() -> str | None:
    """This process's pid namespace (Linux), e.g. 4026531836; None where there is none to read."""
    try:
        link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return None
    digits = "".join(ch for ch in link if ch.isdigit())
    return digits or None


def owner_pid(owner: str, local: str) -> int | None:
    """The process id in a lease owner `local:pid[:nonce]` when it runs where this process can
    see its pid (same host, same pid namespace), else None."""
    if not owner.startswith(local + ":"):
        return None
    pid = owner[len(local) + 1 :].split(":", 1)[0]
    return int(pid) if pid.isdigit() else None


class Plumbing:
    """What both faces share: the engine, who acts (for the audit trail) and the lease owner's name.

    The owner's name is host[@pidns]:pid:nonce. `pidns` (the process id namespace) keeps two
    containers that share a hostname but not their process ids from judging each other dead; the
    nonce keeps a restarted container (same hostname, same pid 1) from taking its dead
    predecessor's leases for its own."""

    def __init__(self, engine: Engine, actor: Actor, lease_s: float, *, pid_namespace: str | None = None) -> None:
        self.engine, self.actor, self.lease_s = engine, actor, lease_s
        self.local = f"{actor.host}@{pid_namespace}" if pid_namespace else actor.host  # who can see whose pids
        self.worker = f"{self.local}:{actor.pid}:{secrets.token_hex(3)}"

    def _tx(self, action: str, fn: Callable[..., _T], *args: Any) -> _T:
        return transaction(self.engine, action, fn, *args)

    def _read(self, action: str, fn: Callable[..., _T], *args: Any) -> _T:
        return reading(self.engine, action, fn, *args)

    def _event(
        self,
        conn: Connection,
        kind: str,
        *,
        job: JobRecord | None = None,
        job_id: int | None = None,
        attempt_id: int | None = None,
        batch_id: int | None = None,
        from_state: str | None = None,
        to_state: str | None = None,
        **details: Any,
    ) -> None:
        """An audit event in the caller's transaction; details that are None are left out."""
        row = event_row(
            self.actor,
            kind,
            batch_id=batch_id or (job.batch_id if job else None),
            job_id=job_id or (job.id if job else None),
            attempt_id=attempt_id,
            from_state=from_state,
            to_state=to_state,
            details={k: v for k, v in details.items() if v is not None},
        )
        pending = conn.info.get(_PENDING_EVENTS)
        if pending is None:  # not in a `transaction`: written now
            insert_events(conn, [row])
        else:
            pending.append(row)

    @staticmethod
    def _clock(conn: Connection) -> datetime:
        """The time leases and retry times are set and compared by: on PostgreSQL the database
        server's clock, so workers on machines whose clocks disagree still agree on when a lease
        ends; SQLite is on this machine anyway."""
        if conn.dialect.name == "postgresql":
            server_now: datetime = conn.execute(_SERVER_NOW).scalar_one()
            return server_now
        return utcnow()

    def _lease_end(self, conn: Connection) -> Any:
        """When a lease taken or renewed now ends: computed by the server on PostgreSQL (no extra
        round trip), by this machine on SQLite."""
        if conn.dialect.name == "postgresql":
            return func.clock_timestamp() + timedelta(seconds=self.lease_s)
        return utcnow() + timedelta(seconds=self.lease_s)

    @staticmethod
    def _serialize(conn: Connection) -> datetime:
        """Take the `dispatch` row lock: held to the end of the transaction, it makes claims and run
        creation one at a time across every thread, process and machine. Returns the time by
        `_clock` once the lock is held (on PostgreSQL in the same round trip)."""
        if conn.dialect.name == "postgresql":
            server_now: datetime = conn.execute(_TAKE_DISPATCH_AT).scalar_one()
            return server_now
        conn.execute(_TAKE_DISPATCH)
        return Plumbing._clock(conn)

    @staticmethod
    def _scope(batches: Sequence[str] | None) -> list[Any]:
        """The WHERE terms that keep a job query to these batches (none: every batch)."""
        if not batches:
            return []
        return [in_batches(list(batches))]

    @staticmethod
    def _scoped(
        statements: tuple[Any, Any], batches: Sequence[str] | None, params: dict[str, Any]
    ) -> tuple[Any, dict[str, Any]]:
        """Run one of a prebuilt pair, (every batch, IN_BATCHES), for these batches."""
        if not batches:
            return statements[0], params
        return statements[1], {**params, "b_batches": list(batches)}
