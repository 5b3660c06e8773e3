"""The prebuilt UPDATEs take their SET columns from their parameters (transition.Setter): a key that
names no column would be dropped by SQLAlchemy without a word, so it is refused, and nothing is
written; on both backends."""

from __future__ import annotations

import pytest
from sqlalchemy import insert, select

from batch_runner.db import engine as db_engine
from batch_runner.db.models import Batch, Lock, table
from batch_runner.db.transition import Setter

B = table(Batch)


@pytest.fixture
def engine(db_url):
    engine = db_engine.open_engine(db_url, auto_migrate=True)
    with engine.begin() as conn:
        conn.execute(insert(B).values(name="b", manifest_path="m.yaml"))
    yield engine
    engine.dispose()


def test_a_prebuilt_update_sets_its_columns_and_refuses_a_key_that_names_none(engine):
    by_name = Setter.of(B, B.c.name == "b")
    with engine.begin() as conn:
        assert by_name(conn, {"manifest_path": "n.yaml"}).rowcount == 1
    for wrong in ({"manifest_path": "x.yaml", "manifest_pth": "x.yaml"}, {"b_only": 1}, {}):
        with pytest.raises(ValueError, match="no column named"), engine.begin() as conn:
            by_name(conn, wrong)
    with engine.connect() as conn:
        assert conn.execute(select(B.c.manifest_path)).scalar_one() == "n.yaml"
    assert Setter.of(table(Lock), table(Lock).c.name == "dispatch").columns == {"name", "counter"}
