"""Jobs: submit, list, get, cancel, trials, Pareto front."""

from __future__ import annotations

from typing import Annotated, Any

import optuna
import timm
import torch
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from optuna.trial import TrialState
from sqlalchemy import select

from latency_models.registry import Registry
from search import JobInputError, JobSpec, check_job
from search.trials import is_pareto_candidate
from server.api.deps import JobDep, RegistryDep, SessionDep, SettingsDep, StoreDep
from server.api.paths import PathError, resolve_paths
from server.api.routing import JSONRoute
from server.api.schemas import JobOut, JobSubmit, ModelOut, ParetoOut, TrialOut
from server.api.summary import summarise
from server.db.models import JOB_STATES, PrunedModel
from server.jobs import cancel_job, create_job, list_jobs

router = APIRouter(prefix="/api/jobs", tags=["jobs"], route_class=JSONRoute)


MAX_DEPTH = 256


class ModelOptionsError(ValueError):
    """model_kwargs that do not build the model, or build one the weights cannot be for."""


def _check_model_kwargs(spec: JobSpec) -> None:
    """Build the model with the job's model_kwargs on the meta device: shapes only, no memory, milliseconds.

    timm hands model_kwargs to the model's constructor, which fails on an unknown or ill-typed option with
    whatever error it happens to hit (TypeError, AssertionError, ZeroDivisionError, ...), and builds a model
    of any size it is asked for (embed_dim=40000 is 200 billion parameters: building it for real would take
    the service down). Both are refused here, before check_job builds the model for real.
    """
    if not spec.model_kwargs:
        return
    depth = spec.model_kwargs.get("depth")
    if isinstance(depth, int) and depth > MAX_DEPTH:
        # Building costs time per block even on the meta device (~5 ms): depth=10**6 would hold this
        # request for an hour and a half.
        raise ModelOptionsError(
            f"model_kwargs depth={depth} is more blocks than any ViT has; vitprune takes models of up to "
            f"{MAX_DEPTH} blocks: give the depth the weights were trained with"
        )
    try:
        with torch.device("meta"):
            model = timm.create_model(spec.model, pretrained=False, **spec.model_kwargs)
    except Exception as error:
        try:
            with torch.device("meta"):
                timm.create_model(spec.model, pretrained=False)
        except Exception:
            return  # not the options' fault (e.g. an unknown model name): check_job says what is wrong
        raise ModelOptionsError(
            f"model_kwargs {spec.model_kwargs} do not build {spec.model} ({type(error).__name__}: {error}); "
            "give only timm.create_model options of this model, with values of their type, e.g. "
            '{"num_classes": 10, "img_size": 224}'
        ) from error
    weights = spec.weights
    if weights is not None and weights.is_file():
        # Each parameter takes at least one byte in any weights file that could load into this model.
        params, size = sum(p.numel() for p in model.parameters()), weights.stat().st_size
        if params > size:
            raise ModelOptionsError(
                f"model_kwargs {spec.model_kwargs} make {spec.model} a model of {params:,} parameters, more than "
                f"the weights file ({size:,} bytes) can hold; give the options the weights were trained with"
            )


def _check(spec: JobSpec, registry: Registry) -> None:
    _check_model_kwargs(spec)
    check_job(spec, registry)


@router.post("", status_code=201, response_model=JobOut)
async def submit(
    body: JobSubmit, session: SessionDep, settings: SettingsDep, store: StoreDep, registry: RegistryDep
) -> JobOut:
    """Queue a search job. Its model, weights, images, device and budget are checked first, so a job
    that cannot run is refused now with the reason (e.g. the cheapest config's latency) instead of
    failing in the queue."""
    try:
        spec = resolve_paths(body.spec, settings, store)
        # Loading weights and pricing the model take seconds: not on the event loop.
        await run_in_threadpool(_check, spec, registry)
    except (PathError, JobInputError, ValueError, OSError) as error:
        raise HTTPException(400, str(error)) from error
    return JobOut.of(create_job(session, spec, body.name))


@router.get("", response_model=list[JobOut])
def jobs(
    session: SessionDep,
    status: Annotated[str | None, Query(description=f"one of {', '.join(JOB_STATES)}")] = None,
    model: str | None = None,
    device: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, lt=2**31)] = 0,
) -> list[JobOut]:
    if status is not None and status not in JOB_STATES:
        raise HTTPException(400, f"unknown status {status!r}; use one of {', '.join(JOB_STATES)}")
    for name, value in (("model", model), ("device", device)):
        # No stored name has one, and PostgreSQL refuses NUL in a query's text (a 500 before this check).
        if value is not None and "\x00" in value:
            raise HTTPException(400, f"{name}: a NUL character never occurs in a {name} name; remove it")
    found = list_jobs(session, status=status, model=model, device=device, limit=limit, offset=offset)
    return [JobOut.of(job) for job in found]


@router.get("/{job_id}", response_model=JobOut)
def job(job: JobDep) -> JobOut:
    return JobOut.of(job)


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel(job: JobDep, session: SessionDep) -> JobOut:
    """Cancel a queued or running job; its worker stops within a trial or two. A finished job is left as it is."""
    if not cancel_job(session, job):
        raise HTTPException(409, f"job {job.id} is already {job.status}; only queued or running jobs can be cancelled")
    return JobOut.of(job)


@router.get("/{job_id}/trials", response_model=list[TrialOut])
def trials(job: JobDep, request: Request) -> list[TrialOut]:
    """Every trial of the job's study so far (calibration accuracy, predicted latency, feasibility)."""
    storage = request.app.state.optuna_storage
    try:
        study = optuna.load_study(study_name=job.study_name, storage=storage)
    except KeyError:
        return []  # queued: the study is created when a worker starts the job
    return [_trial(t) for t in study.get_trials(deepcopy=False)]


def _trial(trial: optuna.trial.FrozenTrial) -> TrialOut:
    complete = trial.state == TrialState.COMPLETE
    config: dict[str, Any] | None = trial.user_attrs.get("config")
    return TrialOut(
        number=trial.number,
        state=trial.state.name.lower(),
        accuracy=trial.values[0] if complete else None,
        latency_ms=trial.values[1] if complete else trial.user_attrs.get("predicted_ms"),
        feasible=is_pareto_candidate(trial) or (complete and all(v <= 0 for v in trial.constraints.values())),
        evaluated=bool(trial.user_attrs.get("evaluated")),
        params=trial.params,
        summary=summarise(config) if config else None,
    )


@router.get("/{job_id}/pareto", response_model=ParetoOut)
def pareto(job: JobDep, session: SessionDep) -> ParetoOut:
    """The job's materialised Pareto models, fastest first (empty until the job is done)."""
    models = session.scalars(
        select(PrunedModel).where(PrunedModel.job_id == job.id).order_by(PrunedModel.predicted_ms)
    ).all()
    return ParetoOut(
        job_id=job.id,
        status=job.status,
        budget_ms=job.budget_ms,
        dense_ms=job.dense_ms,
        dense=job.dense,
        models=[ModelOut.of(m) for m in models],
    )
