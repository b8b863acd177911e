"""tokens may act for a person: api_tokens.user_id, and queue-ordering index on (task, created, id)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26

A reviewer token bound to a user lets machine clients (a customer's own review tool, the
backtest's simulated reviewer) claim and decide cases as that person. The extra index lets
exports and queue listings read a task's cases in (created_at, id) order without sorting.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
            )
        )
        batch_op.create_foreign_key(
            op.f("fk_api_tokens_user_id_users"), "users", ["user_id"], ["id"]
        )
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.create_index(
            "ix_cases_task_created_id", ["task_id", "created_at", "id"], unique=False
        )
        batch_op.drop_index("ix_cases_task_created")


def downgrade() -> None:
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.create_index("ix_cases_task_created", ["task_id", "created_at"], unique=False)
        batch_op.drop_index("ix_cases_task_created_id")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("fk_api_tokens_user_id_users"), type_="foreignkey")
        batch_op.drop_column("user_id")
