"""Open a database: SQLite (WAL; checked to be ours, created only when asked, migrated on use)
or PostgreSQL (checked)."""

from __future__ import annotations

import sqlite3
import threading
import weakref
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from sqlalchemy import URL, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, ProgrammingError, SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry

from ..errors import DatabaseBehindError, DatabaseError, DatabaseNotFoundError, shorten

if TYPE_CHECKING:  # Alembic is imported where it is used: opening a current SQLite file needs none of it
    from alembic.config import Config

#: The newest migration (tests/unit/test_db_head.py checks it is Alembic's head): a SQLite file at
#: it is current, known without loading Alembic and its scripts.
HEAD_REVISION = "0008"
SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
#: tables every batch-runner schema has had since revision 0001
CORE_TABLES = frozenset({"batches", "jobs", "attempts", "events"})
_CHECK_HINT = "check --db / BATCH_RUNNER_DB"
_NEW_HINT = f"{_CHECK_HINT}, or create a new database there on purpose with `batch-runner db upgrade`"
_EMPTY_HINT = f"{_CHECK_HINT}, or make it a new database on purpose with `batch-runner db upgrade`"


def safe_url(url: str) -> str:
    """The URL with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<invalid database URL>"


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
        # the text itself is not shown: it may hold a password that could not be located
        raise DatabaseError(
            "the database URL (--db / BATCH_RUNNER_DB) is not valid",
            hint="use sqlite:///PATH, a file path, or postgresql://user@host/db",
        ) from exc


def sqlite_file(url: str) -> Path | None:
    """The file behind a SQLite URL; None for an in-memory database, a `file:` URI or a server."""
    parsed = _parse(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:" or "uri" in parsed.query:
        return None
    return Path(database)


def inspect_sqlite(path: Path, *, allow_new: bool) -> str | None:
    """The schema revision of the batch-runner database in the SQLite file at `path` (None: no
    schema yet), found by reading only, so a file that is not ours is left exactly as it was.

    A missing or empty file is a new database only when `allow_new`: otherwise a mistyped --db
    would silently start an empty ledger, and the next run would pay for every job again. A
    file that is not SQLite, or a SQLite database that is not batch-runner's, is always refused.
    """
    try:
        if not path.parent.exists():
            if allow_new:
                return None
            raise DatabaseNotFoundError(
                f"no database at {path}: the folder {path.parent} does not exist", hint=_NEW_HINT
            )
        if path.is_dir():
            raise DatabaseNotFoundError(f"{path} is a folder, not a database file", hint=_CHECK_HINT)
        with path.open("rb") as file:
            header = file.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        if allow_new:
            return None
        raise DatabaseNotFoundError(f"no database at {path}: the file does not exist", hint=_NEW_HINT) from None
    except OSError as exc:
        raise DatabaseError(f"cannot read {path}: {exc.strerror}", hint="check the file's permissions") from exc
    if not header:
        if allow_new:
            return None
        raise DatabaseNotFoundError(f"{path} is an empty file, not a batch-runner database", hint=_EMPTY_HINT)
    if header != SQLITE_MAGIC:
        raise DatabaseNotFoundError(f"{path} is not a SQLite database; it was left untouched", hint=_CHECK_HINT)
    tables, revision = _read_schema(path)
    if revision is None and tables <= {"alembic_version"}:  # alembic_version alone: downgraded to base
        if allow_new:
            return None
        raise DatabaseNotFoundError(f"{path} holds no tables, not a batch-runner database", hint=_EMPTY_HINT)
    if "alembic_version" not in tables or not tables >= CORE_TABLES:
        raise DatabaseNotFoundError(
            f"{path} is a SQLite database but not batch-runner's ({len(tables)} table(s), "
            "not our schema); it was left untouched",
            hint=_CHECK_HINT,
        )
    if revision is not None and revision != HEAD_REVISION and revision not in _known_revisions():
        shown = repr(revision) if len(revision) <= 32 else repr(revision[:32]) + "…"  # another program's text
        raise DatabaseNotFoundError(
            f"{path} is at schema revision {shown}, which this batch-runner does not know; it was left untouched",
            hint=f"a newer batch-runner made it: upgrade batch-runner, or {_CHECK_HINT}",
        )
    return revision


def _read_schema(path: Path) -> tuple[frozenset[str], str | None]:
    """A SQLite file's table names and Alembic revision, read without writing anything.

    `immutable` takes no lock and makes no -wal/-shm files beside a file that may not be ours;
    that is safe only while no -wal file exists (no writer holds pages the main file lacks),
    so with one present the file is opened plainly read-only instead.
    """
    wal = path.with_name(path.name + "-wal")
    mode = "mode=ro" if wal.exists() else "mode=ro&immutable=1"
    try:
        conn = sqlite3.connect(
            f"file:{quote(str(path.absolute()))}?{mode}", uri=True, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000
        )
        try:
            tables = frozenset(
                name
                for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                if not name.startswith("sqlite_")
            )
            revision = None
            if "alembic_version" in tables:
                row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
                revision = str(row[0]) if row and row[0] is not None else None
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:  # locked, or cannot be opened
        raise DatabaseError(f"cannot read {path}: {_first_line(exc)}") from exc
    except sqlite3.DatabaseError as exc:  # "file is not a database": damaged, or encrypted
        raise DatabaseNotFoundError(
            f"{path} is not a readable SQLite database ({_first_line(exc)}); it was left untouched", hint=_CHECK_HINT
        ) from exc
    return tables, revision


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def stored_revision(url: str, *, allow_new: bool = False) -> str | None:
    """The schema revision of a database (None: no schema yet), read without creating,
    migrating or changing anything; a missing SQLite file is an error unless `allow_new`."""
    path = sqlite_file(url)
    if path is not None:
        return inspect_sqlite(path, allow_new=allow_new)
    engine = create(url)
    try:
        return current_revision(engine)
    except SQLAlchemyError as exc:
        raise DatabaseError(
            f"cannot open database {safe_url(url)}: {_first_line(exc)}",
            hint="check that the server runs and the URL (--db / BATCH_RUNNER_DB)",
        ) from exc
    finally:
        engine.dispose()


def migrations_dir() -> Path:
    """The Alembic scripts: inside the wheel, or the repository's top-level `migrations/`."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[1] / "_migrations", here.parents[2] / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise DatabaseError("the Alembic migrations are missing from this installation", hint="reinstall batch-runner")


def alembic_config() -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    return cfg


_WRITE_LOCKS: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def write_lock(engine: Engine) -> AbstractContextManager[object]:
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
    parsed = _parse(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            try:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatabaseError(f"cannot create the folder for {parsed.database}: {exc.strerror}") from exc
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **sizing)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.close()

        return engine
    # named in pg_stat_activity unless PGAPPNAME or the URL names it otherwise: workers are easy to spot
    named = {"fallback_application_name": "batch-runner"}
    if parsed.get_backend_name() != "postgresql":
        raise DatabaseError(
            f"cannot use database {shorten(safe_url(url), 120)}: "
            f"{shorten(parsed.get_backend_name(), 30)} is not supported, only SQLite and PostgreSQL",
            hint="use sqlite:///PATH, a file path, or postgresql://user@host/db",
        )
    try:
        return create_engine(parsed, pool_pre_ping=True, connect_args=named, **sizing)
    except (ArgumentError, ImportError, NoSuchModuleError) as exc:
        raise DatabaseError(
            f"cannot use database {shorten(safe_url(url), 120)}: its driver is not installed",
            hint="install batch-runner with its PostgreSQL driver (psycopg), or use sqlite:///PATH",
        ) from exc


def _stored_revision(engine: Engine) -> str | None:
    """The revision a server database records, read plainly (None when it records none, or the
    table is not there yet: Alembic's own reading then decides)."""
    with engine.connect() as conn:
        try:
            rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all()
        except ProgrammingError:  # no such table: a new database
            return None
    return rows[0] if len(rows) == 1 else None


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run the migrations up to `revision`.

    On SQLite, Alembic's batch mode recreates tables, which needs foreign keys off, and
    pysqlite runs DDL outside a transaction, so a failure could leave a half-migrated file:
    the file is backed up first and restored if anything fails.
    """
    from alembic import command

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
                "SELECT name FROM sqlite_master WHERE type='table' AND name LIKE '\\_alembic\\_tmp\\_%' ESCAPE '\\'"
            ).all():
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
        raise DatabaseError(
            f"upgrading {path} failed and the database was restored as it was: {_first_line(exc)}",
            hint=f"a copy is kept at {backup}",
        ) from exc
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


def open_engine(
    url: str, *, auto_migrate: bool | None = None, pool_size: int | None = None, allow_new: bool = True
) -> Engine:
    """Connect and make sure the schema is current.

    A SQLite file is checked first, changing nothing: another program's file is refused, and a
    missing or empty one becomes a new database only when `allow_new` (the CLI allows it for
    the default location and `db upgrade` alone; see inspect_sqlite). SQLite databases are
    migrated automatically (auto_migrate defaults to True for them); a PostgreSQL database
    that is behind raises DatabaseBehindError with the fix.
    """
    path = sqlite_file(url)
    stored = inspect_sqlite(path, allow_new=allow_new) if path is not None else None
    engine = create(url, pool_size)
    is_sqlite = engine.dialect.name == "sqlite"
    try:
        if stored == HEAD_REVISION:  # a current SQLite file: connecting is all there is left to check
            with engine.connect():
                return engine
        if not is_sqlite and _stored_revision(engine) == HEAD_REVISION:
            return engine  # current: known without loading Alembic (about 0.3 s of CPU per process)
        current = current_revision(engine)
        head = head_revision()
        if current is not None and current not in _known_revisions():  # PostgreSQL (SQLite is inspected above)
            shown = repr(current) if len(current) <= 32 else repr(current[:32]) + "…"
            raise DatabaseBehindError(
                f"database {safe_url(url)} is at schema revision {shown}, which this batch-runner does not know",
                hint="a newer batch-runner migrated it: upgrade batch-runner on this machine too "
                "(never `db upgrade` with the older one)",
            )
        if current != head:
            if auto_migrate if auto_migrate is not None else is_sqlite:
                upgrade(engine)
            else:
                raise DatabaseBehindError(
                    f"database {safe_url(url)} is at schema revision {current or 'none (empty)'}, "
                    f"this batch-runner needs {head}",
                    hint="run `batch-runner db upgrade`",
                )
    except OperationalError as exc:
        engine.dispose()
        raise DatabaseError(
            f"cannot open database {safe_url(url)}: {_first_line(exc)}",
            hint="check that the server runs and the URL (--db / BATCH_RUNNER_DB)",
        ) from exc
    except SQLAlchemyError as exc:
        engine.dispose()
        raise DatabaseError(f"database {safe_url(url)} failed: {_first_line(exc)}") from exc
    return engine


def _first_line(exc: Exception) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
