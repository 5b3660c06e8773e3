"""budget policies: per rolling day and warning threshold

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("batch_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(batch_op.f("fk_attempts_batch_id_batches"), "batches", ["batch_id"], ["id"])
        batch_op.create_index(batch_op.f("ix_attempts_created_at"), ["created_at"], unique=False)
    # Existing attempts belong to their job's batch (the per-day budget sums attempts by batch).
    op.execute("UPDATE attempts SET batch_id = (SELECT jobs.batch_id FROM jobs WHERE jobs.id = attempts.job_id)")

    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("daily_budget_micro_usd", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("warn_at_micro_usd", sa.BigInteger(), nullable=True))

    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("daily_budget_micro_usd", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("warn_at_micro_usd", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("warn_at_micro_usd")
        batch_op.drop_column("daily_budget_micro_usd")

    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_column("warn_at_micro_usd")
        batch_op.drop_column("daily_budget_micro_usd")

    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_attempts_created_at"))
        batch_op.drop_constraint(batch_op.f("fk_attempts_batch_id_batches"), type_="foreignkey")
        batch_op.drop_column("batch_id")
