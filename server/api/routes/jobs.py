"""Jobs: submit, list, get, cancel, trials, Pareto front."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import select

from search.context import JobInputError, check_job
from search.job import JobSpec
from search.records import trial_records
from server.api.deps import JobDep, RegistryDep, SessionDep, SettingsDep, StoreDep
from server.api.paths import PathError, public_message, resolve_paths
from server.api.routing import JSONRoute
from server.api.schemas import JobOut, JobSubmit, ModelOut, ParetoOut, TrialOut
from server.db.models import JOB_STATES, PrunedModel
from server.jobs import cancel_job, create_job, list_jobs
from server.settings import Settings
from server.store import ArtifactStore

router = APIRouter(prefix="/api/jobs", tags=["jobs"], route_class=JSONRoute)


@router.post("", status_code=201, response_model=JobOut)
async def submit(
    body: JobSubmit, session: SessionDep, settings: SettingsDep, store: StoreDep, registry: RegistryDep
) -> JobOut | JSONResponse:
    """Queue a search job. Its model, weights, images, device and budget are checked first, so a job
    that cannot run is refused now with the reason (e.g. the cheapest config's latency) instead of
    failing in the queue. A refusal (400) has `detail` (every problem, "; " between them) and
    `errors`, one {field, loc, message} per problem: every bad path at once, not only the first."""
    try:
        spec, bad_paths = _resolve_every_path(body.spec, settings, store)
        if bad_paths:
            return _refused([(("body", "spec", error.field), str(error)) for error in bad_paths])
        # Building the model (its options first), loading weights and pricing it take seconds: not on the event loop.
        await run_in_threadpool(check_job, spec, registry)
    except (JobInputError, ValueError, OSError) as error:
        return _refused([(("body", "spec"), public_message(str(error), body.spec, settings, store))])
    return JobOut.of(create_job(session, spec, body.name))


def _resolve_every_path(spec: JobSpec, settings: Settings, store: ArtifactStore) -> tuple[JobSpec, list[PathError]]:
    """`spec` with its paths resolved, and the error of every bad one (resolve_paths stops at the first)."""
    errors: list[PathError] = []
    while True:
        try:
            return resolve_paths(spec, settings, store), errors
        except PathError as error:
            errors.append(error)
            spec = spec.model_copy(update={error.field: None})  # reported: the next pass checks the others


def _refused(problems: list[tuple[tuple[str, ...], str]]) -> JSONResponse:
    # The shape of the 422 answers (server/api/errors.py): a sentence, and one entry per problem.
    errors = [{"field": ".".join(loc[1:]), "loc": list(loc), "message": message} for loc, message in problems]
    return JSONResponse({"detail": "; ".join(message for _, message in problems), "errors": errors}, status_code=400)


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
    models = _models_of(session, [job.id for job in found])
    return [JobOut.of(job, models.get(job.id, [])) for job in found]


def _models_of(session: SessionDep, job_ids: list[int]) -> dict[int, list[PrunedModel]]:
    """The Pareto models of many jobs in one query (each job's best validation top-1 and image counts)."""
    grouped: dict[int, list[PrunedModel]] = {}
    if job_ids:
        for model in session.scalars(select(PrunedModel).where(PrunedModel.job_id.in_(job_ids))):
            grouped.setdefault(model.job_id, []).append(model)
    return grouped


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
