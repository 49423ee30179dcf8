"""dense model of a job

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("vp_jobs", sa.Column("dense", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("vp_jobs", "dense")
