"""What the REST API sends and receives (the job spec itself is search.JobSpec, shared with the CLI)."""

from __future__ import annotations

import unicodedata
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from search.job import JobSpec
from server.api.summary import summarise
from server.db.models import Job, PrunedModel

if TYPE_CHECKING:
    from search.records import TrialRecord  # the search layer's trials: loads torch, which schemas need not

__all__ = ["JobOut", "JobSubmit", "ModelOut", "ParetoOut", "Progress", "TrialOut", "UploadOut"]


def _utc(value: datetime) -> datetime:
    # SQLite hands back the UTC times it stores without a zone; an RFC 3339 date-time (what the schema promises,
    # and what clients parse unambiguously) needs one. PostgreSQL's come with theirs and are left as they are.
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


Timestamp = Annotated[datetime, AfterValidator(_utc)]


class JobSubmit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spec: JobSpec
    name: str | None = Field(default=None, max_length=200, description="a label; default 'MODEL on DEVICE'")

    @field_validator("name")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        # A label is shown in lists and pages; control characters garble them, and PostgreSQL refuses NUL outright.
        if value is not None and any(unicodedata.category(char) == "Cc" for char in value):
            raise ValueError("no control characters (NUL, tabs, line breaks) in a name; use one line of text")
        return value


class Progress(BaseModel):
    done: int
    total: int
    feasible: int
    best_accuracy: float | None = Field(description="best calibration top-1 (%) of a trial within budget so far")
    eta_s: float | None


class JobOut(BaseModel):
    id: int
    name: str
    status: str
    model: str
    device: str
    spec: dict[str, Any]
    study_name: str
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    progress: Progress
    budget_ms: float | None
    dense_ms: float | None
    error: str | None
    notes: dict[str, Any] | None = Field(
        description="what to know about a job that runs, e.g. skipped_calib_images: unreadable images (count, files)"
    )
    worker: str | None
    attempts: int

    @classmethod
    def of(cls, job: Job) -> JobOut:
        progress = Progress(
            done=job.trials_done,
            total=job.trials_total,
            feasible=job.feasible,
            best_accuracy=job.best_accuracy,
            eta_s=job.eta_s,
        )
        fields = {name: getattr(job, name) for name in cls.model_fields if hasattr(job, name)}
        return cls(**fields | {"progress": progress, "worker": job.lease_owner})


class ModelOut(BaseModel):
    id: int
    job_id: int
    trial: int
    config: dict[str, Any]
    val_top1: float | None
    calib_accuracy: float | None
    predicted_ms: float
    measured_ms: float | None
    params: int
    gflops: float
    sha256: str = Field(description="sha256 of model.safetensors")
    metrics: dict[str, Any]
    summary: str = Field(description="the pruned structure in a few words")
    created_at: Timestamp

    @classmethod
    def of(cls, model: PrunedModel) -> ModelOut:
        fields = {name: getattr(model, name) for name in cls.model_fields if name != "summary"}
        return cls(**fields, summary=summarise(model.config))


class ParetoOut(BaseModel):
    job_id: int
    status: str
    budget_ms: float | None
    dense_ms: float | None
    dense: dict[str, Any] | None = Field(
        description="the dense model: per-block structure (tokens_in, heads, mlp_hidden), validation metrics, latency"
    )
    models: list[ModelOut]


class TrialOut(BaseModel):
    number: int
    state: str
    accuracy: float | None = Field(description="calibration top-1 (%)")
    latency_ms: float | None = Field(description="predicted latency on the job's device")
    feasible: bool | None
    evaluated: bool
    pareto: bool = Field(description="on the Pareto front of the job's trials so far (within budget, evaluated)")
    params: dict[str, Any]
    summary: str | None = Field(description="the pruned structure in a few words")

    @classmethod
    def of(cls, record: TrialRecord) -> TrialOut:
        return cls(
            number=record.number,
            state=record.state,
            accuracy=record.calib_accuracy,
            latency_ms=record.predicted_ms,
            feasible=record.feasible,
            evaluated=record.evaluated,
            pareto=record.pareto,
            params=record.params,
            summary=summarise(record.config) if record.config else None,
        )


class UploadOut(BaseModel):
    ref: str = Field(description="use this in a job spec in place of a path")
    size: int
    sha256: str
    classes: int | None = None
    images: int | None = None
