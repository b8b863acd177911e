"""the compiled predictor's stored form: model_versions.predictor

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30

A web process scores a logistic-regression version with NumPy alone from this ``.npz``
(service/ml/fast.py, ``predictor_state``), so it never loads scikit-learn, skops and pandas
(~170 MB) just to read the skops artefact. The artefact stays the source of truth: a version
without a stored form (older ones, boosted trees) is compiled from it as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("predictor", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_column("predictor")
