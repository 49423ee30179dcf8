"""FastAPI dependencies: the app's settings, a database session, the artifact store, the device registry."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from sqlalchemy.orm import Session

from latency_models.registry import Registry
from server.db.models import Job, PrunedModel
from server.settings import Settings
from server.store import ArtifactStore

__all__ = ["JobDep", "ModelDep", "RegistryDep", "SessionDep", "SettingsDep", "StoreDep"]


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def _store(request: Request) -> ArtifactStore:
    return request.app.state.store


def _registry(request: Request) -> Registry:
    return request.app.state.registry


SettingsDep = Annotated[Settings, Depends(_settings)]
SessionDep = Annotated[Session, Depends(_session)]
StoreDep = Annotated[ArtifactStore, Depends(_store)]
RegistryDep = Annotated[Registry, Depends(_registry)]


Id = Annotated[int, Path(ge=1, lt=2**31, description="a database id")]


def _job(job_id: Id, session: SessionDep) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}; list jobs with GET /api/jobs")
    return job


def _model(model_id: Id, session: SessionDep) -> PrunedModel:
    model = session.get(PrunedModel, model_id)
    if model is None:
        raise HTTPException(404, f"no model {model_id}; a job's models are at GET /api/jobs/{{id}}/pareto")
    return model


JobDep = Annotated[Job, Depends(_job)]
ModelDep = Annotated[PrunedModel, Depends(_model)]
