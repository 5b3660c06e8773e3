"""indexes for big batches

The worker's claim (`state = 'queued' ORDER BY id LIMIT 1`, optionally within some batches) reads
an index in id order instead of sorting every queued job; its lease queries (`lease_owner = ?`,
run every heartbeat) and the report's join of outputs to attempts no longer scan whole tables.
(state, id) and (batch_id, state, id) replace the narrower (state) and (batch_id, state).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_state")
        batch_op.drop_index("ix_jobs_batch_id_state")
        batch_op.create_index("ix_jobs_state_id", ["state", "id"], unique=False)
        batch_op.create_index("ix_jobs_batch_id_state_id", ["batch_id", "state", "id"], unique=False)
        batch_op.create_index("ix_jobs_lease_owner", ["lease_owner"], unique=False)
    with op.batch_alter_table("outputs", schema=None) as batch_op:
        batch_op.create_index("ix_outputs_attempt_id", ["attempt_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("outputs", schema=None) as batch_op:
        batch_op.drop_index("ix_outputs_attempt_id")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_lease_owner")
        batch_op.drop_index("ix_jobs_batch_id_state_id")
        batch_op.drop_index("ix_jobs_state_id")
        batch_op.create_index("ix_jobs_batch_id_state", ["batch_id", "state"], unique=False)
        batch_op.create_index("ix_jobs_state", ["state"], unique=False)
