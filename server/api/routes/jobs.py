"""Jobs: submit, list, get, cancel, trials, Pareto front."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from search.context import JobInputError, check_job
from search.records import trial_records
from server.api.deps import JobDep, RegistryDep, SessionDep, SettingsDep, StoreDep
from server.api.paths import PathError, resolve_paths
from server.api.routing import JSONRoute
from server.api.schemas import JobOut, JobSubmit, ModelOut, ParetoOut, TrialOut
from server.db.models import JOB_STATES, PrunedModel
from server.jobs import cancel_job, create_job, list_jobs

router = APIRouter(prefix="/api/jobs", tags=["jobs"], route_class=JSONRoute)


@router.post("", status_code=201, response_model=JobOut)
async def submit(
    body: JobSubmit, session: SessionDep, settings: SettingsDep, store: StoreDep, registry: RegistryDep
) -> JobOut:
    """Queue a search job. Its model, weights, images, device and budget are checked first, so a job
    that cannot run is refused now with the reason (e.g. the cheapest config's latency) instead of
    failing in the queue."""
    try:
        spec = resolve_paths(body.spec, settings, store)
        # Building the model (its options first), loading weights and pricing it take seconds: not on the event loop.
        await run_in_threadpool(check_job, spec, registry)
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
    """Every trial of the job's study so far (calibration accuracy, predicted latency, feasibility, on the front)."""
    records = trial_records(request.app.state.optuna_storage, job.study_name)
    return [TrialOut.of(record) for record in records]


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
