"""The schema head the database layer knows without Alembic is Alembic's head."""

from batch_runner.db import engine as db_engine


def test_head_revision_constant_is_alembics_head():
    assert db_engine.head_revision() == db_engine.HEAD_REVISION, "a new migration: set HEAD_REVISION in db/engine.py"
