"""the retrain counter leaves the task row: one retrain_labels row per human label

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30

``tasks.labels_since_training += 1`` on every decision made all decisions of a task wait, one
after the other, for the task row's lock (bench/README.md, "Decide without a hot row"). The
count becomes append-only rows, summed when read and deleted by the request for training
that counted them. A task's current count moves over as one row of ``n`` labels.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "retrain_labels",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("task_id", BigId, nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
            name=op.f("fk_retrain_labels_task_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retrain_labels")),
    )
    op.create_index("ix_retrain_labels_task", "retrain_labels", ["task_id"])
    op.execute(
        "INSERT INTO retrain_labels (task_id, n) SELECT id, labels_since_training FROM tasks"
        " WHERE labels_since_training > 0"
    )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("labels_since_training")


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("labels_since_training", sa.Integer(), nullable=False, server_default="0")
        )
    op.execute(
        "UPDATE tasks SET labels_since_training = COALESCE((SELECT SUM(n) FROM retrain_labels"
        " WHERE retrain_labels.task_id = tasks.id), 0)"
    )
    op.drop_index("ix_retrain_labels_task", table_name="retrain_labels")
    op.drop_table("retrain_labels")
