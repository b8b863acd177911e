"""server-side session validity: users.session_epoch

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30

A login session carries the user's epoch; logging out, a password reset and deactivation
move it on, so every session of that user (a cookie saved elsewhere included) stops working
at once instead of living out its 8 hours.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("session_epoch", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("session_epoch")
