"""The job table on SQLite and PostgreSQL: migrations, idempotent enqueue, probe cache, errors."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, func, select, text

from batch_runner.db import engine as db_engine
from batch_runner.db.models import Base, Event, Job
from batch_runner.db.repo import Repository
from batch_runner.domain import Actor, Estimate, JobSpec, ProbeResult
from batch_runner.errors import DatabaseBehindError, DatabaseError


def _spec(i: int, **params) -> JobSpec:
    return JobSpec(
        batch="b",
        endpoint="luma/agent/ray/v3.2/reframe",
        source=f"/m/{i}.mp4",
        media_field="video_url",
        params={"prompt": "p", "video_url": f"/m/{i}.mp4", "aspect_ratio": "1:1", **params},
        output=f"/out/{i}.mp4",
        tags=("t",),
        origin=f"m.yaml:{i}",
        key=f"{i:064d}"[-64:] if not params else f"{i}-{sorted(params.items())}".ljust(64, "x")[:64],
        fingerprint=f"file:/m/{i}.mp4:1:1",
        estimate=Estimate(300_000, Decimal(5), "second", 60_000, "fal-published@2026-11-21", True),
    )


def test_migrations_match_the_models_on_an_empty_database(empty_db_url):
    engine = db_engine.open_engine(empty_db_url, auto_migrate=True)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    assert db_engine.current_revision(engine) == db_engine.head_revision()


def test_sqlite_default_is_created_in_wal_mode(tmp_path: Path):
    path = tmp_path / "deep" / "folder" / "jobs.db"
    db_engine.open_engine(f"sqlite:///{path}")
    assert path.exists()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_postgres_behind_asks_for_db_upgrade(pg_empty_url):
    with pytest.raises(DatabaseBehindError) as err:
        db_engine.open_engine(pg_empty_url)
    assert "batch-runner db upgrade" in str(err.value) and err.value.exit_code == 6
    db_engine.open_engine(pg_empty_url, auto_migrate=True)
    db_engine.open_engine(pg_empty_url)  # now current: no error


def test_postgres_ahead_asks_for_a_newer_batch_runner_and_changes_nothing(pg_url):
    engine = db_engine.open_engine(pg_url, auto_migrate=True)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    engine.dispose()
    for auto in (False, True):  # not even `db upgrade` touches it
        with pytest.raises(DatabaseBehindError) as err:
            db_engine.open_engine(pg_url, auto_migrate=auto)
        assert "does not know" in err.value.message and "upgrade batch-runner" in (err.value.hint or "")
        assert "db upgrade`" not in err.value.message
    plain = create_engine(pg_url)
    with plain.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one() == "9999_from_the_future"
    plain.dispose()


def test_dead_database_is_a_clear_error_without_the_password():
    with pytest.raises(DatabaseError) as err:
        db_engine.open_engine("postgresql+psycopg://postgres:s3cret@127.0.0.1:1/none")
    assert "cannot open database" in str(err.value) and "s3cret" not in str(err.value)
    assert err.value.exit_code == 6


def test_unwritable_sqlite_location_is_a_database_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DatabaseError):
        db_engine.open_engine(f"sqlite:///{blocker}/sub/jobs.db")


def test_enqueue_twice_adds_nothing(db_url):
    repo = Repository(db_engine.open_engine(db_url, auto_migrate=True))
    jobs = [_spec(i) for i in range(5)]
    first = repo.enqueue("b", "/m.yaml", 25_000_000, jobs, Actor.current())
    second = repo.enqueue("b", "/m.yaml", 25_000_000, jobs, Actor.current())
    assert (first.added, first.existing, second.added, second.existing) == (5, 0, 0, 5)
    [count] = repo.state_counts("b")
    assert (count.state, count.jobs, count.estimated_micro_usd) == ("queued", 5, 1_500_000)


def test_enqueue_writes_an_audit_event_per_job(db_url):
    engine = db_engine.open_engine(db_url, auto_migrate=True)
    repo = Repository(engine)
    repo.enqueue("b", "/m.yaml", None, [_spec(1), _spec(2)], Actor.current())
    with engine.connect() as conn:
        events = conn.execute(
            select(Event.kind, Event.to_state, Event.pid, Event.host).where(Event.job_id.is_not(None))
        ).all()
        stored = conn.execute(select(Job.input_json, Job.tags_json, Job.price_table)).first()
    assert len(events) == 2 and all(e.kind == "job.enqueued" and e.to_state == "queued" for e in events)
    assert events[0].pid == Actor.current().pid
    assert json.loads(stored.input_json)["video_url"] == "/m/1.mp4"
    assert json.loads(stored.tags_json) == ["t"] and stored.price_table == "fal-published@2026-11-21"


def test_a_new_job_is_added_and_old_rows_are_untouched(db_url):
    engine = db_engine.open_engine(db_url, auto_migrate=True)
    repo = Repository(engine)
    repo.enqueue("b", None, None, [_spec(1)], Actor.current())
    with engine.connect() as conn:
        before = conn.execute(select(Job.__table__)).mappings().all()
    result = repo.enqueue("b", None, None, [_spec(1), _spec(1, resolution="720p")], Actor.current())
    with engine.connect() as conn:
        after = conn.execute(select(Job.__table__).order_by(Job.id)).mappings().all()
    assert (result.added, result.existing) == (1, 1)
    assert dict(after[0]) == dict(before[0])


def test_enqueue_is_all_or_nothing(db_url):
    engine = db_engine.open_engine(db_url, auto_migrate=True)
    repo = Repository(engine)
    broken = dataclasses.replace(_spec(2), output=None)  # violates NOT NULL mid-batch
    with pytest.raises(DatabaseError) as err:
        repo.enqueue("b", None, None, [_spec(1), broken], Actor.current())
    assert "nothing was written" in str(err.value)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Job)).scalar_one() == 0
        assert conn.execute(text("select count(*) from batches")).scalar_one() == 0


def test_probe_cache_round_trip(db_url):
    repo = Repository(db_engine.open_engine(db_url, auto_migrate=True))
    r = ProbeResult("/m/a.mp4", "file:/m/a.mp4:10:1", "video", Decimal("5.04"), 64, 36, "50/1", "h264", 90, True, 10)
    repo.store_probes([r])
    repo.store_probes([r])  # storing twice is harmless
    assert repo.cached_probes(["file:/m/a.mp4:10:1", "file:/other"]) == {"file:/m/a.mp4:10:1": r}


def test_timestamps_come_back_timezone_aware(db_url):
    engine = db_engine.open_engine(db_url, auto_migrate=True)
    Repository(engine).enqueue("b", None, None, [_spec(1)], Actor.current())
    with engine.connect() as conn:
        created = conn.execute(select(Job.created_at)).scalar_one()
    assert created.tzinfo is not None and created.utcoffset().total_seconds() == 0


def test_alembic_cli_env_can_run_from_the_repository(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    cfg = db_engine.alembic_config()
    cfg.set_main_option("sqlalchemy.url", url)
    from alembic import command

    command.upgrade(cfg, "head")
    assert db_engine.current_revision(create_engine(url)) == db_engine.head_revision()


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 2 MiB tmpfs, filled by `filler` up to about 300 KiB free: room for the schema only."""
    import subprocess

    from tests.conftest import skip_or_fail

    mnt = tmp_path / "tiny"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        skip_or_fail(f"cannot mount a tmpfs (needs root): {proc.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_is_a_clear_error_and_writes_nothing(tiny_disk: Path):
    (tiny_disk / "filler").write_bytes(b"\0" * (1700 * 1024))
    engine = db_engine.open_engine(f"sqlite:///{tiny_disk / 'jobs.db'}")
    repo = Repository(engine)
    jobs = [_spec(i) for i in range(5000)]
    with pytest.raises(DatabaseError) as err:
        repo.enqueue("b", "/m.yaml", None, jobs, Actor.current())
    assert "full" in str(err.value) and "nothing was written" in str(err.value) and err.value.exit_code == 6
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Job)).scalar_one() == 0
    (tiny_disk / "filler").unlink()  # the user frees space and tries again: it works, nothing lost
    again = repo.enqueue("b", "/m.yaml", None, jobs[:50], Actor.current())
    assert again.added == 50


def _at_0002_with_data(url: str | Path) -> None:
    """A database (a SQLite path or any URL) at revision 0002 holding a job, an attempt and an
    event that references it."""
    engine = db_engine.create(url if isinstance(url, str) else f"sqlite:///{url}")
    db_engine.upgrade(engine, "0002")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "insert into batches (name, created_at, updated_at) values ('b', '2026-01-01', '2026-01-01')"
        )
        conn.exec_driver_sql(
            "insert into jobs (key, batch_id, endpoint, input_json, output_path, state, estimate_micro_usd, "
            "billable_units, unit, price_table, price_verified, tags_json, attempt_count, created_at, updated_at) "
            "values ('k1', 1, 'luma/agent/ray/v3.2/reframe', '{}', '/o.mp4', 'succeeded', 600000, '5', 'second', "
            "'t@1', true, '[]', 1, '2026-01-01', '2026-01-01')"
        )
        conn.exec_driver_sql(
            "insert into attempts (job_id, number, state, billed_micro_usd, created_at) "
            "values (1, 1, 'succeeded', 600000, '2026-01-01')"
        )
        conn.exec_driver_sql(
            'insert into events (at, job_id, attempt_id, host, pid, "user", kind, details_json) '
            "values ('2026-01-01', 1, 1, 'h', 1, 'u', 'job.succeeded', '{}')"
        )
    engine.dispose()


def test_every_migration_runs_up_with_data_down_and_up_again(empty_db_url):
    """On both backends: 0002 with data → head (data kept, new columns backfilled) → every
    downgrade to an empty database → head again, matching the models."""
    from alembic import command

    _at_0002_with_data(empty_db_url)
    engine = db_engine.create(empty_db_url)
    db_engine.upgrade(engine)
    with engine.connect() as conn:
        assert tuple(conn.execute(text("select batch_id, billed_micro_usd from attempts")).one()) == (1, 600000)
        assert conn.execute(text("select count(*) from events where attempt_id = 1")).scalar_one() == 1
    cfg = db_engine.alembic_config()
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")  # batch mode recreates tables
            conn.commit()
        with conn.begin():
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "base")
    assert db_engine.current_revision(engine) is None
    db_engine.upgrade(engine)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata) == []
        assert conn.execute(text("select count(*) from jobs")).scalar_one() == 0


def test_sqlite_upgrade_keeps_data_and_backfills(tmp_path: Path):
    path = tmp_path / "old.db"
    _at_0002_with_data(path)
    engine = db_engine.open_engine(f"sqlite:///{path}")  # SQLite migrates itself to head
    assert db_engine.current_revision(engine) == db_engine.head_revision()
    with engine.connect() as conn:
        assert conn.execute(text("select batch_id, billed_micro_usd from attempts")).one() == (1, 600000)
        assert conn.execute(text("select count(*) from events where attempt_id = 1")).scalar_one() == 1
    assert not (tmp_path / "old.db.pre-upgrade.bak").exists()


def test_sqlite_upgrade_cleans_up_an_interrupted_one(tmp_path: Path):
    path = tmp_path / "old.db"
    _at_0002_with_data(path)
    con = sqlite3.connect(path)
    con.execute("create table _alembic_tmp_attempts (id integer)")  # what an interrupted batch op leaves
    con.commit()
    con.close()
    engine = db_engine.open_engine(f"sqlite:///{path}")
    assert db_engine.current_revision(engine) == db_engine.head_revision()


def test_a_failed_sqlite_upgrade_restores_the_database(tmp_path: Path):
    path = tmp_path / "old.db"
    engine = db_engine.create(f"sqlite:///{path}")
    db_engine.upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "insert into batches (name, created_at, updated_at) values ('keep', '2026-01-01', '2026-01-01')"
        )
        conn.exec_driver_sql("create table locks (x integer)")  # 0002 creates `locks`: it will fail
    engine.dispose()
    with pytest.raises(DatabaseError) as err:
        db_engine.open_engine(f"sqlite:///{path}")
    assert "restored as it was" in str(err.value) and "pre-upgrade.bak" in str(err.value)
    con = sqlite3.connect(path)
    assert con.execute("select version_num from alembic_version").fetchall() == [("0001",)]
    assert con.execute("select name from batches").fetchall() == [("keep",)]


def test_postgres_connections_are_named_for_monitoring(pg_url):
    engine = db_engine.open_engine(pg_url, auto_migrate=True)
    with engine.connect() as conn:
        names = (
            conn.execute(text("select application_name from pg_stat_activity where datname = current_database()"))
            .scalars()
            .all()
        )
    assert "batch-runner" in names
