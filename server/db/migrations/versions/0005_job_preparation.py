"""a job's model label and its preparation progress

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("vp_jobs", sa.Column("model_label", sa.String(length=200), nullable=True))
    op.add_column("vp_jobs", sa.Column("preparation", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("vp_jobs", "preparation")
    op.drop_column("vp_jobs", "model_label")
