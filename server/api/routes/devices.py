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

from latency_models.registry import Registry
from latency_models.schema import LatencyTable
from server.api.deps import RegistryDep, SessionDep
from server.api.routing import JSONRoute, parse_json
from server.db.models import DeviceProfile

router = APIRouter(prefix="/api/devices", tags=["devices"], route_class=JSONRoute)

MAX_TABLE_BYTES = 64 << 20
HARDWARE_CHARS = DeviceProfile.hardware.type.length  # the database column that lists it

# The body is read raw (and validated by the registry), so FastAPI would not document it; this does.
TABLE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": "a latency table (vitprune.latency-table JSON) written by `vitprune profile`",
                }
            }
        },
    }
}


@router.get("")
def devices(registry: RegistryDep) -> list[dict[str, Any]]:
    """Every device a job can name: host-cpu (measured on first use), cuda, analytic presets, imported tables."""
    aliases = {device: alias for alias, device in registry.aliases().items()}
    return [asdict(d) | {"alias": aliases.get(d.name)} for d in registry.devices()]


@router.get("/{name}")
def device(name: str, registry: RegistryDep) -> dict[str, Any]:
    """One device; imported and analytic ones with their metadata (runtime, threads, parameters and sources)."""
    name = registry.aliases().get(name, name)
    found = {d.name: d for d in registry.devices()}
    if name not in found:
        raise HTTPException(404, f"unknown device {name!r}; known: {', '.join(sorted(found))}")
    return asdict(found[name]) | registry.backend(name).details()


@router.post("", status_code=201, openapi_extra=TABLE_BODY)
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
        data = parse_json(body)
    except json.JSONDecodeError as error:
        raise HTTPException(400, f"the body is not JSON: {error}; send the table file as the request body") from error
    _check_hardware(data)
    try:
        table = await run_in_threadpool(_import, registry, session, body, name)
    except ValueError as error:  # a bad name, or a table the schema refuses (the message names the field)
        raise HTTPException(400, str(error)) from error
    return {"name": name, "kind": "imported", "hardware": table.device.hardware, "entries": len(table.entries)}


def _check_hardware(data: Any) -> None:
    """The one field of a table the database keeps: refused before anything is stored, not by the database."""
    device = data.get("device") if isinstance(data, dict) else None
    hardware = device.get("hardware") if isinstance(device, dict) else None
    if not isinstance(hardware, str):
        return  # the table's own validation names what is missing or mistyped
    if len(hardware) > HARDWARE_CHARS or "\x00" in hardware:
        raise HTTPException(
            400, f"device.hardware: at most {HARDWARE_CHARS} characters and no NUL; describe the hardware briefly"
        )


def _import(registry: Registry, session: Session, body: bytes, name: str) -> LatencyTable:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "table.json"
        path.write_bytes(body)
        try:
            table = registry.import_table(path, name)
        except ValueError as error:
            # The registry names the file it read; here that is a temporary copy of the body the client never saw.
            raise ValueError(str(error).replace(str(path), "the table")) from error
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
