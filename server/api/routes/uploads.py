"""Uploads: dense weights and zipped image datasets, received as the raw request body.

A raw body (not a multipart form) streams straight to disk with the size limit enforced as it
arrives; a declared Content-Length over the limit is refused before a byte is stored.
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from server.api.deps import SessionDep, SettingsDep, StoreDep
from server.api.paths import UPLOAD_PREFIX
from server.api.routing import JSONRoute
from server.api.schemas import UploadOut
from server.db.models import Upload
from server.store import ArtifactStore
from server.uploads import UploadError, check_weights, extract_dataset, receive

router = APIRouter(prefix="/api/uploads", tags=["uploads"], route_class=JSONRoute)

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
Filename = Annotated[str, Query(description="the file's name, e.g. model.safetensors or images.zip")]


def _raw_body(description: str) -> dict:
    # The body is streamed from the request, so FastAPI would not document it; this does.
    schema = {"type": "string", "format": "binary", "description": description}
    return {"requestBody": {"required": True, "content": {"application/octet-stream": {"schema": schema}}}}


def _check_name(filename: str) -> str:
    if not SAFE_NAME.match(filename):
        raise HTTPException(400, "filename: use 1-128 letters, digits, '.', '_' or '-' (no folders)")
    return filename


def _check_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(
            413, f"upload of {int(declared) >> 20} MB is over the limit of {limit >> 20} MB (VITPRUNE_MAX_UPLOAD_MB)"
        )


@router.put(
    "/weights",
    response_model=UploadOut,
    status_code=201,
    openapi_extra=_raw_body("the weights file's bytes: .safetensors, or a .pth/.pt/.bin state dict"),
)
async def upload_weights(
    request: Request, filename: Filename, settings: SettingsDep, store: StoreDep, session: SessionDep
) -> UploadOut:
    """Dense model weights: .safetensors, or .pth/.pt/.bin read with torch's weights-only loader (never unpickled)."""
    name = _check_name(filename)
    _check_length(request, settings.max_upload_bytes)
    key = f"weights/{uuid.uuid4().hex}"
    folder = store.path(f"uploads/{key}")
    folder.mkdir(parents=True)
    try:
        size, sha256 = await receive(request.stream(), folder / name, settings.max_upload_bytes)
        await run_in_threadpool(check_weights, folder / name)
    except UploadError as error:
        store.remove(folder)
        raise HTTPException(error.status, str(error)) from error
    except BaseException:
        store.remove(folder)
        raise
    upload = _record(session, store, "weights", f"{key}/{name}", size, sha256)
    return UploadOut(ref=upload.ref, size=size, sha256=sha256)


@router.put(
    "/datasets",
    response_model=UploadOut,
    status_code=201,
    openapi_extra=_raw_body("a .zip of an ImageFolder: one folder of images per class"),
)
async def upload_dataset(
    request: Request, filename: Filename, settings: SettingsDep, store: StoreDep, session: SessionDep
) -> UploadOut:
    """A zip of an ImageFolder (one folder of images per class); checked for unsafe entries and bombs, then unpacked."""
    _check_name(filename)
    _check_length(request, settings.max_upload_bytes)
    key = f"datasets/{uuid.uuid4().hex}"
    archive = store.path(f"uploads/incoming/{uuid.uuid4().hex}.zip")
    archive.parent.mkdir(parents=True, exist_ok=True)
    store.path("uploads/datasets").mkdir(exist_ok=True)
    try:
        size, sha256 = await receive(request.stream(), archive, settings.max_upload_bytes)
        counts = await run_in_threadpool(extract_dataset, archive, store.path(f"uploads/{key}"))
    except UploadError as error:
        raise HTTPException(error.status, str(error)) from error
    finally:
        archive.unlink(missing_ok=True)
    upload = _record(session, store, "dataset", key, size, sha256)
    return UploadOut(ref=upload.ref, size=size, sha256=sha256, classes=counts["classes"], images=counts["images"])


def _record(session: Session, store: ArtifactStore, kind: str, key: str, size: int, sha256: str) -> Upload:
    path = store.relative(store.path(f"uploads/{key}"))
    upload = Upload(ref=f"{UPLOAD_PREFIX}{key}", kind=kind, path=path, size=size, sha256=sha256)
    session.add(upload)
    session.commit()
    return upload
