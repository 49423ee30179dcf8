"""a job's models may be fine-tuned versions of its Pareto models: one row per trial and variant

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UNIQUE = "uq_vp_models_job_trial_variant"


def _models_table(metadata: sa.MetaData, unique: tuple[str, ...]) -> sa.Table:
    """vp_models as 0001 made it (with `variant`), and the unique key `unique`: SQLite cannot drop the
    unnamed unique key 0001 made, so the table is copied into this definition instead."""
    return sa.Table(
        "vp_models",
        metadata,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("trial", sa.Integer(), nullable=False),
        sa.Column("variant", sa.String(length=20), nullable=False, server_default="searched"),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("config_key", sa.String(length=100), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("val_top1", sa.Float(), nullable=True),
        sa.Column("calib_accuracy", sa.Float(), nullable=True),
        sa.Column("predicted_ms", sa.Float(), nullable=False),
        sa.Column("measured_ms", sa.Float(), nullable=True),
        sa.Column("params", sa.Integer(), nullable=False),
        sa.Column("gflops", sa.Float(), nullable=False),
        sa.Column("path", sa.String(length=500), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("pareto", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["vp_jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(*unique, name=UNIQUE if "variant" in unique else None),
        sa.Index("ix_vp_models_job_id", "job_id"),
    )


def upgrade() -> None:
    op.add_column("vp_models", sa.Column("variant", sa.String(length=20), nullable=False, server_default="searched"))
    if op.get_bind().dialect.name == "sqlite":
        table = _models_table(sa.MetaData(), ("job_id", "trial", "variant"))
        with op.batch_alter_table("vp_models", recreate="always", copy_from=table):
            pass
    else:
        op.drop_constraint("vp_models_job_id_trial_key", "vp_models", type_="unique")
        op.create_unique_constraint(UNIQUE, "vp_models", ["job_id", "trial", "variant"])


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM vp_models WHERE variant <> 'searched'"))
    if op.get_bind().dialect.name == "sqlite":
        table = _models_table(sa.MetaData(), ("job_id", "trial"))
        with op.batch_alter_table("vp_models", recreate="always", copy_from=table) as batch:
            batch.drop_column("variant")
    else:
        op.drop_constraint(UNIQUE, "vp_models", type_="unique")
        op.create_unique_constraint("vp_models_job_id_trial_key", "vp_models", ["job_id", "trial"])
        op.drop_column("vp_models", "variant")
