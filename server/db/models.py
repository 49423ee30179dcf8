"""The service's tables. Optuna's tables (the trials of every job's study) live in the same database.

Timestamps come from the database clock (`server_default`, `db_now`), never a worker's clock, so
leases compare correctly across machines.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = ["FINAL", "JOB_STATES", "Base", "DeviceProfile", "Job", "PrunedModel", "Upload", "Worker"]

JOB_STATES = ("preparing", "queued", "running", "materialising", "done", "failed", "cancelled")
"""`preparing`: the job's inputs are still being made (the demo's model is trained) before it is queued."""
FINAL = ("done", "failed", "cancelled")
ACTIVE = ("running", "materialising")


class Base(DeclarativeBase):
    pass


def _created() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class Job(Base):
    __tablename__ = "vp_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    status: Mapped[str] = mapped_column(String(20), nullable=False, default="queued", index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    model: Mapped[str] = mapped_column(String(200), nullable=False, index=True)
    model_label: Mapped[str | None] = mapped_column(String(200))
    """What the model is, for people: the timm name and its changed options (e.g. the demo's small ViT)."""
    device: Mapped[str] = mapped_column(String(200), nullable=False, index=True)
    compute: Mapped[str] = mapped_column(String(20), nullable=False, default="auto", server_default="auto")
    """Where its trials are scored: cpu, cuda (only workers with a GPU claim it) or auto (any worker)."""
    study_name: Mapped[str] = mapped_column(String(300), nullable=False)
    created_at: Mapped[datetime] = _created()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    trials_total: Mapped[int] = mapped_column(Integer, nullable=False)
    trials_done: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    feasible: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    best_accuracy: Mapped[float | None] = mapped_column(Float)
    eta_s: Mapped[float | None] = mapped_column(Float)
    budget_ms: Mapped[float | None] = mapped_column(Float)
    dense_ms: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    notes: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """What the user should know about a job that still runs, e.g. unreadable images that were skipped."""
    preparation: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """While `preparing`: the current stage and its progress, {"stage": text, "done": n, "total": m}."""
    dense: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """The dense model: per-block structure and its validation metrics and latency (set when done)."""
    models: Mapped[list[PrunedModel]] = relationship(back_populates="job", order_by="PrunedModel.predicted_ms")


class PrunedModel(Base):
    __tablename__ = "vp_models"
    __table_args__ = (UniqueConstraint("job_id", "trial", "variant", name="uq_vp_models_job_trial_variant"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("vp_jobs.id", ondelete="CASCADE"), nullable=False, index=True)
    trial: Mapped[int] = mapped_column(Integer, nullable=False)
    variant: Mapped[str] = mapped_column(String(20), nullable=False, default="searched", server_default="searched")
    """What the model is of its trial (`search.pareto.VARIANTS`): as the search found it, or fine-tuned from that."""
    config: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    config_key: Mapped[str] = mapped_column(String(100), nullable=False)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    val_top1: Mapped[float | None] = mapped_column(Float)
    calib_accuracy: Mapped[float | None] = mapped_column(Float)
    predicted_ms: Mapped[float] = mapped_column(Float, nullable=False)
    measured_ms: Mapped[float | None] = mapped_column(Float)
    params: Mapped[int] = mapped_column(Integer, nullable=False)
    gflops: Mapped[float] = mapped_column(Float, nullable=False)
    path: Mapped[str] = mapped_column(String(500), nullable=False)
    """The bundle directory, relative to the artifact store."""
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    """Of model.safetensors: what a download is checked against."""
    pareto: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    created_at: Mapped[datetime] = _created()
    job: Mapped[Job] = relationship(back_populates="models")


class DeviceProfile(Base):
    """A latency table imported into the service (built-in and measured ones come from the registry)."""

    __tablename__ = "vp_devices"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20), nullable=False)
    hardware: Mapped[str] = mapped_column(String(300), nullable=False)
    path: Mapped[str] = mapped_column(String(500), nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = _created()


class Upload(Base):
    """A file or dataset a user uploaded; jobs name it by `ref`."""

    __tablename__ = "vp_uploads"

    ref: Mapped[str] = mapped_column(String(300), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20), nullable=False)
    path: Mapped[str] = mapped_column(String(500), nullable=False)
    """Relative to the artifact store."""
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    """Of the uploaded bytes (the zip, for a dataset)."""
    created_at: Mapped[datetime] = _created()


class Worker(Base):
    __tablename__ = "vp_workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(200), nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    started_at: Mapped[datetime] = _created()
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)
    job_id: Mapped[int | None] = mapped_column(Integer)
    trials_run: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    compute: Mapped[str] = mapped_column(String(200), nullable=False, default="cpu", server_default="cpu")
    """What it scores trials on: 'cpu', or 'cuda (the GPU's name)' (`pruning.compute.compute_name`)."""
