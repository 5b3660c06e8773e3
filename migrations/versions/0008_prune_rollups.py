"""prune rollups

`prune` deletes finished jobs' attempts and events past a horizon and keeps their report
figures in `rollups` (per UTC day, batch, project, endpoint); each pruned job is marked with
`pruned_at` (the job row stays: enqueue must still know it was done and paid). A `prune` row in
`locks` keeps two prunes from writing the same rollup at once. events.attempt_id gets an index
(0007 indexes outputs.attempt_id), so deleting attempts does not scan them.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("batch_id", sa.Integer(), nullable=False),
        sa.Column("project", sa.String(length=200), nullable=True),
        sa.Column("endpoint", sa.String(length=200), nullable=False),
        sa.Column("jobs", sa.Integer(), nullable=False),
        sa.Column("outcomes_json", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("estimated_micro_usd", sa.BigInteger(), nullable=False),
        sa.Column("billed_micro_usd", sa.BigInteger(), nullable=False),
        sa.Column("retry_spend_micro_usd", sa.BigInteger(), nullable=False),
        sa.Column("waste_micro_usd", sa.BigInteger(), nullable=False),
        sa.Column("delivered_us", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], name=op.f("fk_rollups_batch_id_batches")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollups")),
    )
    op.create_index("ix_rollups_day_batch_id", "rollups", ["day", "batch_id"], unique=False)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pruned_at", sa.DateTime(timezone=True), nullable=True))
    locks = sa.table("locks", sa.column("name", sa.String), sa.column("counter", sa.BigInteger))
    op.bulk_insert(locks, [{"name": "prune", "counter": 0}])
    # deleting an attempt checks the rows that refer to it: without this index that is a scan of
    # every event per attempt (measured: most of a prune transaction's time); 0007 indexes
    # outputs.attempt_id
    op.create_index(op.f("ix_events_attempt_id"), "events", ["attempt_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_events_attempt_id"), table_name="events")
    op.execute("DELETE FROM locks WHERE name = 'prune'")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("pruned_at")
    op.drop_index("ix_rollups_day_batch_id", table_name="rollups")
    op.drop_table("rollups")
