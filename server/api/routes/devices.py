"""Device profiles: the built-in and measured ones of the registry, and tables imported from users' devices."""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from latency_models.analytic import PRESETS
from latency_models.registry import KIND_DEFAULTS, Registry
from latency_models.schema import LatencyTable
from server.api.deps import RegistryDep, SessionDep
from server.db.models import DeviceProfile

router = APIRouter(prefix="/api/devices", tags=["devices"])

MAX_TABLE_BYTES = 64 << 20


@router.get("")
def devices(registry: RegistryDep) -> list[dict[str, Any]]:
    """Every device a job can name: host-cpu (measured on first use), cuda, analytic presets, imported tables."""
    aliases = {preset: kind for kind, preset in KIND_DEFAULTS.items()}
    return [asdict(d) | {"alias": aliases.get(d.name)} for d in registry.devices()]


@router.get("/{name}")
def device(name: str, registry: RegistryDep) -> dict[str, Any]:
    """One device; imported and analytic ones with their metadata (runtime, threads, parameters and sources)."""
    name = KIND_DEFAULTS.get(name, name)
    found = {d.name: d for d in registry.devices()}
    if name not in found:
        raise HTTPException(404, f"unknown device {name!r}; known: {', '.join(sorted(found))}")
    result = asdict(found[name])
    if name in PRESETS:
        result["parameters"] = PRESETS[name].model_dump(mode="json")
    elif found[name].kind == "imported":
        table = LatencyTable.load(registry.imported_path(name))
        result["table"] = table.device.model_dump(mode="json") | {"entries": len(table.entries)}
    return result


@router.post("", status_code=201)
async def import_device(
    request: Request,
    session: SessionDep,
    registry: RegistryDep,
    name: Annotated[str, Query(description="the name jobs will use, e.g. pixel-8-cpu")],
) -> dict[str, Any]:
    """Import a latency table (the JSON `vitprune profile` or `python -m latency_models.profiling` wrote on the
    device) as the body; it is validated and stored under `name`."""
    body = await request.body()  # tables are small; the limit below keeps it so
    if len(body) > MAX_TABLE_BYTES:
        raise HTTPException(413, f"a latency table is at most {MAX_TABLE_BYTES >> 20} MB")
    try:
        json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise HTTPException(400, f"the body is not JSON: {error}; send the table file as the request body") from error
    try:
        table = await run_in_threadpool(_import, registry, session, body, name)
    except ValueError as error:  # a bad name, or a table the schema refuses (the message names the field)
        raise HTTPException(400, str(error)) from error
    return {"name": name, "kind": "imported", "hardware": table.device.hardware, "entries": len(table.entries)}


def _import(registry: Registry, session: Session, body: bytes, name: str) -> LatencyTable:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "table.json"
        path.write_bytes(body)
        table = registry.import_table(path, name)
    session.merge(
        DeviceProfile(
            name=name,
            kind="imported",
            hardware=table.device.hardware,
            path=str(registry.imported_path(name)),
            sha256=hashlib.sha256(body).hexdigest(),
        )
    )
    session.commit()
    return table
