"""ledger epochs and the reason for the automation state: tasks.ledger_since,
tasks.automation_reason

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30

A fallback starts a new ledger epoch: the certification that lets automation resume is made
on audit-flagged cases that arrived after the alarm, never on a ledger mixing the traffic
before and after the change that set it off. The reason tells an admin why the task
automates or not (a revoked certification looks like any other in the numbers).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import service.db

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("ledger_since", service.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("automation_reason", sa.String(300), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("automation_reason")
        batch_op.drop_column("ledger_since")
