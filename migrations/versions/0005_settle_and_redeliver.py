"""settle uncertain submits and redeliver outputs

Attempts keep what they sent (the input's sha256, when it went out), fal's output URL (so a
failed delivery can be downloaded again without paying again) and the run that settled them (a
run's summary counts the jobs it finished, whoever started them). Jobs keep the attempt count at
their last manual retry (each `retry` grants a fresh set of automatic attempts); runs remember
that their warning threshold fired.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("input_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("output_url", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("settled_run_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(batch_op.f("fk_attempts_settled_run_id_runs"), "runs", ["settled_run_id"], ["id"])
        batch_op.create_index(batch_op.f("ix_attempts_settled_run_id"), ["settled_run_id"], unique=False)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("output_root", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("retry_base", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("warned", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("warned")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("retry_base")
        batch_op.drop_column("output_root")
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_attempts_settled_run_id"))
        batch_op.drop_constraint(batch_op.f("fk_attempts_settled_run_id_runs"), type_="foreignkey")
        batch_op.drop_column("settled_run_id")
        batch_op.drop_column("output_url")
        batch_op.drop_column("sent_at")
        batch_op.drop_column("input_sha256")
