"""where a job is scored (cpu, cuda or auto) and what compute each worker has

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("vp_jobs", sa.Column("compute", sa.String(length=20), nullable=False, server_default="auto"))
    op.add_column("vp_workers", sa.Column("compute", sa.String(length=200), nullable=False, server_default="cpu"))


def downgrade() -> None:
    op.drop_column("vp_workers", "compute")
    op.drop_column("vp_jobs", "compute")
