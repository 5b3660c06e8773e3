"""job project (cost centre)

Each job carries the manifest's `project` (a cost centre for chargeback), so `report` can group
and filter by it in SQL.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("project", sa.String(length=200), nullable=True))
        batch_op.create_index(batch_op.f("ix_jobs_project"), ["project"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_project"))
        batch_op.drop_column("project")
