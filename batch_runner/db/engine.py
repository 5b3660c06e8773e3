"""Open a database: SQLite (WAL, created and migrated on first use) or PostgreSQL (checked)."""

from __future__ import annotations

import threading
import weakref
from contextlib import nullcontext
from pathlib import Path
from typing import ContextManager

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError

from ..errors import DatabaseBehindError, DatabaseError

SQLITE_BUSY_TIMEOUT_MS = 30_000


def safe_url(url: str) -> str:
    """The URL with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid database URL>"


def migrations_dir() -> Path:
    """The Alembic scripts: inside the wheel, or the repository's top-level `migrations/`."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[1] / "_migrations", here.parents[2] / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise DatabaseError("the Alembic migrations are missing from this installation",
                        hint="reinstall batch-runner")


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    return cfg


_WRITE_LOCKS: "weakref.WeakKeyDictionary[Engine, threading.Lock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def write_lock(engine: Engine) -> ContextManager[object]:
    """SQLite has one writer at a time: funnel this process's writes through one lock, so
    threads queue here instead of in SQLite's busy handler (which sleeps up to 100 ms a try).
    PostgreSQL needs no such lock."""
    if engine.dialect.name != "sqlite":
        return nullcontext()
    with _LOCKS_GUARD:
        lock = _WRITE_LOCKS.get(engine)
        if lock is None:
            lock = _WRITE_LOCKS[engine] = threading.Lock()
    return lock


def create(url: str, pool_size: int | None = None) -> Engine:
    """An Engine with SQLite tuned for a single writer and many readers; `pool_size` should
    cover the threads that use it at once (the worker pool)."""
    sizing = {"pool_size": pool_size, "max_overflow": 4} if pool_size else {}
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseError(f"invalid database URL {url!r}",
                            hint="use sqlite:///PATH or postgresql://user@host/db") from exc
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            try:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatabaseError(f"cannot create the folder for {parsed.database}: {exc.strerror}") from exc
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **sizing)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.close()

        return engine
    # named in pg_stat_activity unless PGAPPNAME or the URL names it otherwise: workers are easy to spot
    named = {"fallback_application_name": "batch-runner"}
    try:
        return create_engine(parsed, pool_pre_ping=True, connect_args=named, **sizing)
    except (ArgumentError, ImportError) as exc:
        raise DatabaseError(f"cannot use database {safe_url(url)}: {exc}") from exc


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run the migrations up to `revision`.

    On SQLite, Alembic's batch mode recreates tables, which needs foreign keys off, and
    pysqlite runs DDL outside a transaction, so a failure could leave a half-migrated file:
    the file is backed up first and restored if anything fails.
    """
    cfg = alembic_config()
    if engine.dialect.name != "sqlite" or not engine.url.database or engine.url.database == ":memory:":
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
        return
    path = Path(engine.url.database)
    backup = path.with_name(path.name + ".pre-upgrade.bak")
    _sqlite_copy(path, backup)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")  # outside any transaction, or it is ignored
            conn.commit()
            for (name,) in conn.exec_driver_sql(
                    "SELECT name FROM sqlite_master WHERE type='table' AND name LIKE '\\_alembic\\_tmp\\_%' ESCAPE '\\'").all():
                conn.exec_driver_sql(f'DROP TABLE "{name}"')  # left by an interrupted batch migration
            conn.commit()
            with conn.begin():
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
            broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")
            conn.commit()
            if broken:
                raise DatabaseError(f"migration left {len(broken)} broken reference(s) in {path}")
    except Exception as exc:
        engine.dispose()
        _sqlite_copy(backup, path)
        raise DatabaseError(f"upgrading {path} failed and the database was restored as it was: "
                            f"{_first_line(exc)}", hint=f"a copy is kept at {backup}") from exc
    backup.unlink(missing_ok=True)


def _sqlite_copy(src: Path, dst: Path) -> None:
    """A consistent copy of a SQLite database (WAL included), via SQLite's backup API."""
    import sqlite3

    source, target = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()


def open_engine(url: str, *, auto_migrate: bool | None = None, pool_size: int | None = None) -> Engine:
    """Connect and make sure the schema is current.

    SQLite databases are migrated automatically (auto_migrate defaults to True for them);
    a PostgreSQL database that is behind raises DatabaseBehindError with the fix.
    """
    engine = create(url, pool_size)
    is_sqlite = engine.dialect.name == "sqlite"
    try:
        current = current_revision(engine)
        head = head_revision()
        if current != head:
            if auto_migrate if auto_migrate is not None else is_sqlite:
                upgrade(engine)
            else:
                raise DatabaseBehindError(
                    f"database {safe_url(url)} is at schema revision {current or 'none (empty)'}, "
                    f"this batch-runner needs {head}",
                    hint="run `batch-runner db upgrade`")
    except OperationalError as exc:
        engine.dispose()
        raise DatabaseError(f"cannot open database {safe_url(url)}: {_first_line(exc)}",
                            hint="check that the server runs and the URL (--db / BATCH_RUNNER_DB)") from exc
    except SQLAlchemyError as exc:
        engine.dispose()
        raise DatabaseError(f"database {safe_url(url)} failed: {_first_line(exc)}") from exc
    return engine


def _first_line(exc: Exception) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
