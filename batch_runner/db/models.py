"""The schema: batches, jobs, attempts, events (append-only audit), outputs, probes.

Money is BIGINT micro-USD; times are timezone-aware UTC; enums are stored as strings.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is stored in UTC and always comes back timezone-aware (SQLite too)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("naive datetime given; use timezone-aware UTC")
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def table(model: type[Base]) -> Table:
    """The model's Table, for Core statements (SQLAlchemy types `__table__` as any FromClause)."""
    return Base.metadata.tables[model.__tablename__]


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    manifest_path: Mapped[str | None] = mapped_column(Text)
    budget_micro_usd: Mapped[int | None] = mapped_column(BigInteger)
    daily_budget_micro_usd: Mapped[int | None] = mapped_column(BigInteger)
    warn_at_micro_usd: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    # (state, id) and (batch_id, state, id): the worker's claim reads queued jobs in id order (0007)
    __table_args__ = (
        Index("ix_jobs_state_id", "state", "id"),
        Index("ix_jobs_batch_id_state_id", "batch_id", "state", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"))
    endpoint: Mapped[str] = mapped_column(String(200))
    source: Mapped[str | None] = mapped_column(Text)
    source_fingerprint: Mapped[str | None] = mapped_column(Text)
    media_field: Mapped[str | None] = mapped_column(String(64))
    input_json: Mapped[str] = mapped_column(Text)
    output_path: Mapped[str] = mapped_column(Text)
    output_root: Mapped[str | None] = mapped_column(Text)  # deliveries must stay inside it
    state: Mapped[str] = mapped_column(String(16))
    estimate_micro_usd: Mapped[int] = mapped_column(BigInteger)
    billable_units: Mapped[str] = mapped_column(String(32))
    unit: Mapped[str] = mapped_column(String(16))
    price_table: Mapped[str] = mapped_column(String(200))
    price_verified: Mapped[bool] = mapped_column(Boolean)
    tags_json: Mapped[str] = mapped_column(Text, default="[]")
    project: Mapped[str | None] = mapped_column(String(200), index=True)  # the manifest's cost centre
    origin: Mapped[str | None] = mapped_column(Text)
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    # attempt_count at the last manual `retry`: each retry grants a fresh set of automatic attempts
    retry_base: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lease_owner: Mapped[str | None] = mapped_column(String(200), index=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    billed_micro_usd: Mapped[int | None] = mapped_column(BigInteger)
    # when `prune` moved this job's attempts and events into `rollups`; the job row stays, so an
    # enqueue still knows it was done and paid, and reports take its figures from the rollups
    pruned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Attempt(Base):
    __tablename__ = "attempts"
    __table_args__ = (UniqueConstraint("job_id", "number", name="uq_attempts_job_id_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("batches.id"))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), index=True)
    worker: Mapped[str | None] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16))
    request_id: Mapped[str | None] = mapped_column(String(200), index=True)
    status_url: Mapped[str | None] = mapped_column(Text)
    response_url: Mapped[str | None] = mapped_column(Text)
    cancel_url: Mapped[str | None] = mapped_column(Text)
    reserved_micro_usd: Mapped[int | None] = mapped_column(BigInteger)
    billed_micro_usd: Mapped[int | None] = mapped_column(BigInteger)
    billable_units: Mapped[str | None] = mapped_column(String(32))
    unit_price_micro_usd: Mapped[int | None] = mapped_column(BigInteger)
    # where the billed amount came from: "fal pricing API", or the price table (name@version)
    # applied to the verified output when fal sent no billable units
    price_source: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    error_type: Mapped[str | None] = mapped_column(String(100))
    # sha256 of the canonical input that was sent: matches the request in fal's request listing
    # when the submit's answer was lost (an uncertain submit)
    input_sha256: Mapped[str | None] = mapped_column(String(64))
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # fal's output file: a failed delivery is downloaded again from here instead of paying again
    output_url: Mapped[str | None] = mapped_column(Text)
    # the run that ended this attempt (a run reports every job it finished, whoever started it)
    settled_run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Event(Base):
    """Append-only audit trail: when, who (host, pid, user), what, from → to."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("batches.id"), index=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    # indexed so deleting an attempt (`prune`) need not scan every event for its foreign key
    attempt_id: Mapped[int | None] = mapped_column(ForeignKey("attempts.id"), index=True)
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    user: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(64))
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str | None] = mapped_column(String(16))
    details_json: Mapped[str] = mapped_column(Text, default="{}")


class Output(Base):
    __tablename__ = "outputs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    attempt_id: Mapped[int | None] = mapped_column(ForeignKey("attempts.id"), index=True)  # see Event.attempt_id
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    duration_us: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Probe(Base):
    """ffprobe results cached by source fingerprint (sha256 of it, for a short unique key)."""

    __tablename__ = "probes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    fingerprint: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(8))
    duration_us: Mapped[int | None] = mapped_column(BigInteger)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    fps: Mapped[str | None] = mapped_column(String(32))
    codec: Mapped[str] = mapped_column(String(64))
    rotation: Mapped[int] = mapped_column(Integer)
    has_audio: Mapped[bool] = mapped_column(Boolean)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    probed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Run(Base):
    """One `run` (or a named run shared by `work` processes): its budget and what it reserved."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("batches.id"))
    budget_micro_usd: Mapped[int | None] = mapped_column(BigInteger)
    daily_budget_micro_usd: Mapped[int | None] = mapped_column(BigInteger)  # per rolling 24 h, this batch
    warn_at_micro_usd: Mapped[int | None] = mapped_column(BigInteger)
    reserved_micro_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    warned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())  # warn_at fired
    status: Mapped[str] = mapped_column(String(16), default="running")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    summary_json: Mapped[str | None] = mapped_column(Text)


class Upload(Base):
    """A local file already uploaded to a fal storage host, reused by content hash."""

    __tablename__ = "uploads"
    __table_args__ = (UniqueConstraint("sha256", "base_url", name="uq_uploads_sha256_base_url"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    base_url: Mapped[str] = mapped_column(String(300))
    url: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Rollup(Base):
    """The report's figures of pruned jobs, per UTC day, batch, project and endpoint: money by
    the day each attempt was made, jobs and their outcomes by the day of each job's last attempt
    (as `report` counts them). Written by `prune` in the transaction that deletes the rows."""

    __tablename__ = "rollups"
    __table_args__ = (Index("ix_rollups_day_batch_id", "day", "batch_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    day: Mapped[date] = mapped_column(Date)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"))
    project: Mapped[str | None] = mapped_column(String(200))
    endpoint: Mapped[str] = mapped_column(String(200))
    jobs: Mapped[int] = mapped_column(Integer, default=0)
    outcomes_json: Mapped[str] = mapped_column(Text, default="{}")  # job state -> count
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    estimated_micro_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    billed_micro_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    retry_spend_micro_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    waste_micro_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    delivered_us: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Lock(Base):
    """Named rows whose row lock serialises short critical sections across workers (claims)."""

    __tablename__ = "locks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    counter: Mapped[int] = mapped_column(BigInteger, default=0)
