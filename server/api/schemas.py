"""What the REST API sends and receives (the job spec itself is search.JobSpec, shared with the CLI)."""

from __future__ import annotations

import unicodedata
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from pruning.image_sets import job_image_sets
from search.job import FLOAT, JobSpec
from search.objectives import OBJECTIVES, STORED_OBJECTIVE
from server.api.summary import summarise
from server.db.models import Job, PrunedModel

if TYPE_CHECKING:
    from search.records import TrialRecord  # the search layer's trials: loads torch, which schemas need not

__all__ = [
    "ImageSetOut",
    "JobOut",
    "JobSubmit",
    "ModelOut",
    "ParetoOut",
    "Preparation",
    "Progress",
    "TrialOut",
    "UploadOut",
]


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
    best_accuracy: float | None = Field(
        description="the older name of best_calib_accuracy (same value): best calibration top-1 (%) so far"
    )
    best_calib_accuracy: float | None = Field(
        default=None,
        description="best calibration top-1 (%) of a trial within budget so far, on the job's calib_images: "
        "not a held-out figure (see JobOut.best_val_accuracy); the search ranks by JobOut.objective",
    )
    eta_s: float | None


class ImageSetOut(BaseModel):
    """The images a figure was measured on."""

    name: str = Field(description="the image folder's name, or the upload ref it came from (never a server path)")
    images: int | None = Field(default=None, description="how many images; null until the job has read them")


class Preparation(BaseModel):
    stage: str = Field(description="what is being prepared, e.g. 'training the demo ViT'")
    done: int
    total: int


class JobOut(BaseModel):
    id: int
    name: str
    status: str
    model: str
    model_label: str = Field(
        description="what the model is, for display: the timm name with the options the job changes, or a "
        "description (the demo's small ViT); `model` stays the timm name"
    )
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
        description=(
            "what to know about a job that runs: latency (trust: what its budget rests on, margin: the safety "
            "margin kept below it), skipped_calib_images: unreadable images (count, files)"
        )
    )
    objective: str = Field(
        description="what the search ranks trials by on the calibration images (JobSpec.objective; trials' score)"
    )
    objective_label: str = Field(description="the objective in words, e.g. 'fidelity 100·exp(-KL)'")
    worker: str | None
    attempts: int
    preparation: Preparation | None = Field(
        default=None, description="while status is 'preparing': the stage and its progress (the demo model's training)"
    )
    best_val_accuracy: float | None = Field(
        default=None,
        description="best validation top-1 (%) of the job's Pareto models (all within budget), on val_images: "
        "the held-out figure to lead with; null until the models are made, or for unlabelled validation images",
    )
    val_images: ImageSetOut | None = Field(default=None, description="the validation images (held out from the search)")
    calib_images: ImageSetOut | None = Field(
        default=None, description="the calibration images the search scores trials on (progress.best_calib_accuracy)"
    )

    @classmethod
    def of(cls, job: Job, models: list[PrunedModel] | None = None) -> JobOut:
        """`models`: the job's Pareto models, when the caller loaded them for many jobs at once (else job.models)."""
        models = job.models if models is None else models
        progress = Progress(
            done=job.trials_done,
            total=job.trials_total,
            feasible=job.feasible,
            best_accuracy=job.best_accuracy,
            best_calib_accuracy=job.best_accuracy,
            eta_s=job.eta_s,
        )
        fields = {name: getattr(job, name) for name in cls.model_fields if hasattr(job, name)}
        fields |= {
            "best_val_accuracy": max((m.val_top1 for m in models if m.val_top1 is not None), default=None),
            **_image_sets(job.spec, models, job.dense),
        }
        label = job.model_label or job.model  # jobs listed before labels existed
        goal = job.spec.get("objective", STORED_OBJECTIVE)
        return cls(
            **fields
            | {"progress": progress, "worker": job.lease_owner, "model_label": label}
            | {"objective": goal, "objective_label": OBJECTIVES[goal].short}
        )


def _image_sets(
    spec: dict[str, Any], models: list[PrunedModel], dense: dict[str, Any] | None = None
) -> dict[str, ImageSetOut | None]:
    """{"val_images": ..., "calib_images": ...}: names from the job's spec, sizes from what its models recorded."""
    names = job_image_sets(spec) if spec.get("calib") else {}
    recorded = next((m.metrics["datasets"] for m in models if isinstance(m.metrics.get("datasets"), dict)), {})
    counts = {role: entry.get("images") for role, entry in recorded.items() if isinstance(entry, dict)}
    if "val" not in counts and isinstance(dense, dict) and isinstance(dense.get("val"), dict):
        counts["val"] = dense["val"].get("n_images")  # jobs made before metrics named their images
    return {
        f"{role}_images": ImageSetOut(name=names[role]["name"], images=counts.get(role)) if role in names else None
        for role in ("val", "calib")
    }


class ModelOut(BaseModel):
    id: int
    job_id: int
    trial: int
    variant: str = Field(
        description="searched: the trial's model as the search found it; fine-tuned: that model trained further "
        "towards the dense one (metrics.before_fine_tune holds its figures before, metrics.fine_tune the run)"
    )
    config: dict[str, Any]
    precision: str = Field(
        default=FLOAT,
        description="fp32, or the quantisation (int8, int8-pow2, w4a8) its weights and scales are stored at",
    )
    float_blocks: list[int] = Field(
        default=[], description="blocks a quantised model keeps in fp32 (per-block precision)"
    )
    val_top1: float | None = Field(description="validation top-1 (%) on val_images (held out from the search)")
    calib_accuracy: float | None = Field(
        description="calibration top-1 (%) on calib_images: the search chose among models on them, so not a "
        "held-out figure; it ranked them by metrics.calib_score (the job's objective); none for a fine-tuned model"
    )
    val_agreement: float | None = Field(
        default=None, description="top-1 agreement (%) with the dense model on val_images (also without labels)"
    )
    val_images: ImageSetOut | None = Field(default=None, description="the images val_top1 was measured on")
    calib_images: ImageSetOut | None = Field(default=None, description="the images calib_accuracy was measured on")
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
        fields = {name: getattr(model, name) for name in cls.model_fields if hasattr(PrunedModel, name)}
        val = model.metrics.get("val") if isinstance(model.metrics.get("val"), dict) else {}
        precision, float_blocks = model.metrics.get("precision", FLOAT), model.metrics.get("float_blocks", [])
        return cls(
            **fields,
            **_image_sets(model.job.spec, [model]),
            precision=precision,
            float_blocks=float_blocks,
            val_agreement=val.get("agreement"),
            summary=summarise(model.config, precision, float_blocks),
        )


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
    score: float | None = Field(
        description="the job's objective on the calibration images (%, higher is better): what the search ranks by"
    )
    latency_ms: float | None = Field(description="predicted latency on the job's device")
    feasible: bool | None
    evaluated: bool
    pareto: bool = Field(description="on the Pareto front of the job's trials so far (within budget, evaluated)")
    params: dict[str, Any]
    precision: str = Field(default=FLOAT, description="fp32, or the quantisation the trial was scored and priced at")
    float_blocks: list[int] = Field(default=[], description="blocks the quantised trial kept in fp32")
    summary: str | None = Field(description="the pruned structure in a few words")

    @classmethod
    def of(cls, record: TrialRecord) -> TrialOut:
        return cls(
            number=record.number,
            state=record.state,
            accuracy=record.calib_accuracy,
            score=record.score,
            latency_ms=record.predicted_ms,
            feasible=record.feasible,
            evaluated=record.evaluated,
            pareto=record.pareto,
            params=record.params,
            precision=record.precision,
            float_blocks=list(record.float_blocks),
            summary=summarise(record.config, record.precision, record.float_blocks) if record.config else None,
        )


class UploadOut(BaseModel):
    ref: str = Field(description="use this in a job spec in place of a path")
    size: int
    sha256: str
    classes: int | None = None
    images: int | None = None
