"""partial indexes on cases: answered cases cost no queue, key, external-id or label entries

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

At high automation most cases are answered at once, never queued, carry no idempotency key or
external id, and never get a label. Making those indexes partial removes most index writes from
the predict hot path (measured: the batch COPY was dominated by index maintenance). The
(task, status) index goes: every query that filters on status also filters on the task and is
served by (task, created_at, id) or the queue indexes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

PARTIAL = {
    "ix_cases_queue": (["task_id", "queue_state", "created_at"], "queue_state IS NOT NULL"),
    "ix_cases_queue_audit": (
        ["task_id", "queue_state", "audit", "created_at"],
        "queue_state IS NOT NULL",
    ),
    "ix_cases_task_external": (["task_id", "external_id"], "external_id IS NOT NULL"),
    "ix_cases_task_labelled": (
        ["task_id", "human_labelled_at"],
        "human_labelled_at IS NOT NULL",
    ),
    "ix_cases_lease": (["lease_expires_at"], "lease_expires_at IS NOT NULL"),
}


def upgrade() -> None:
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.drop_constraint("uq_cases_task_id_idempotency_key", type_="unique")
        batch_op.drop_index("ix_cases_task_status")
        for name in PARTIAL:
            batch_op.drop_index(name)
    where = "idempotency_key IS NOT NULL"
    op.create_index(
        "uq_cases_task_idempotency",
        "cases",
        ["task_id", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text(where),
        sqlite_where=sa.text(where),
    )
    for name, (columns, predicate) in PARTIAL.items():
        op.create_index(
            name,
            "cases",
            columns,
            postgresql_where=sa.text(predicate),
            sqlite_where=sa.text(predicate),
        )


def downgrade() -> None:
    for name in PARTIAL:
        op.drop_index(name, table_name="cases")
    op.drop_index("uq_cases_task_idempotency", table_name="cases")
    with op.batch_alter_table("cases", schema=None) as batch_op:
        for name, (columns, _) in PARTIAL.items():
            batch_op.create_index(name, columns, unique=False)
        batch_op.create_index("ix_cases_task_status", ["task_id", "status"], unique=False)
        batch_op.create_unique_constraint(
            "uq_cases_task_id_idempotency_key", ["task_id", "idempotency_key"]
        )
