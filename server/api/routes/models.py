"""Pruned models: metrics and config, downloads (bundle zip, safetensors, config, ONNX) with checksums."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from sqlalchemy import select

from pruning.bundle import CONFIG_FILE, ONNX_FILE, WEIGHTS_FILE, load_bundle
from server.api.deps import ModelDep, SessionDep, StoreDep
from server.api.routing import JSONRoute
from server.api.schemas import ModelOut
from server.db.models import PrunedModel
from server.store import ArtifactStore, sha256_of

router = APIRouter(prefix="/api/models", tags=["models"], route_class=JSONRoute)


class Format(str, Enum):
    bundle = "bundle"
    safetensors = "safetensors"
    config = "config"
    onnx = "onnx"


@router.get("", response_model=list[ModelOut])
def models(
    session: SessionDep,
    # Bounded like every id: SQLite and PostgreSQL refuse larger integers with an error, not an empty match.
    job_id: Annotated[int | None, Query(ge=1, lt=2**31, description="only this job's models")] = None,
) -> list[ModelOut]:
    query = select(PrunedModel).order_by(PrunedModel.id.desc()).limit(1000)
    if job_id is not None:
        query = query.where(PrunedModel.job_id == job_id)
    return [ModelOut.of(m) for m in session.scalars(query)]


@router.get("/{model_id}", response_model=ModelOut)
def model(model: ModelDep) -> ModelOut:
    return ModelOut.of(model)


@router.get(
    "/{model_id}/download",
    response_class=FileResponse,
    responses={200: {"description": "the file; its sha256 is in the X-Checksum-SHA256 header"}},
)
async def download(model: ModelDep, store: StoreDep, format: Format = Format.bundle) -> FileResponse:
    """bundle: a zip of the whole bundle (config, safetensors, metrics, model card); safetensors: the weights;
    config: config.json (all vitprune needs, with the weights, to rebuild the model); onnx: exported on first
    request (checked against PyTorch with onnxruntime) and kept."""
    bundle = store.path(model.path)
    if not (bundle / WEIGHTS_FILE).is_file():
        raise HTTPException(410, f"the files of model {model.id} are gone from the artifact store")
    if sha256_of(bundle / WEIGHTS_FILE) != model.sha256:
        # Never serve weights that are not the ones the model's metrics were measured on.
        raise HTTPException(409, f"model {model.id}'s weights do not match their recorded checksum")
    prefix = f"vitprune-job{model.job_id}-trial{model.trial}" + (
        "" if model.variant == "searched" else f"-{model.variant}"
    )
    if format == Format.bundle:
        path, name = await run_in_threadpool(store.zipped, bundle), f"{prefix}.zip"
    elif format == Format.safetensors:
        path, name = bundle / WEIGHTS_FILE, f"{prefix}.safetensors"
    elif format == Format.config:
        path, name = bundle / CONFIG_FILE, f"{prefix}.config.json"
    else:
        path, name = await run_in_threadpool(_onnx, store, bundle), f"{prefix}.onnx"
    checksum = model.sha256 if format == Format.safetensors else await run_in_threadpool(sha256_of, path)
    return FileResponse(path, filename=name, headers={"X-Checksum-SHA256": checksum})


@router.head(
    "/{model_id}/download",
    response_class=FileResponse,
    responses={200: {"description": "the headers GET sends (Content-Length, X-Checksum-SHA256, ...), no body"}},
)
async def download_headers(model: ModelDep, store: StoreDep, format: Format = Format.bundle) -> FileResponse:
    """What GET would answer, without the file: `curl -I` and clients that check the size or checksum first.

    The answer is GET's own (FileResponse sends only the headers to a HEAD), so the two cannot disagree."""
    return await download(model, store, format)


def _onnx(store: ArtifactStore, bundle: Path) -> Path:
    # Imported on first export: onnx and its exporter add about a second to the service's start-up.
    from pruning.export import ExportError, export_onnx

    def write(tmp: Path) -> None:
        try:
            export_onnx(load_bundle(bundle), tmp)
        except ExportError as error:
            raise HTTPException(422, f"this model cannot be exported to ONNX: {error}") from error

    return store.produce(bundle / ONNX_FILE, write)
