"""Alembic environment: takes its connection from `config.attributes` (see db/engine.py),
or builds one from `sqlalchemy.url` / BATCH_RUNNER_DB when run with the alembic CLI."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from batch_runner.db.models import Base

target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from batch_runner.config import Settings

    url = context.config.get_main_option("sqlalchemy.url") or Settings.from_env().db_url
    engine = create_engine(url)
    with engine.begin() as conn:
        _run(conn)


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; use `batch-runner db upgrade`")
run_migrations_online()
