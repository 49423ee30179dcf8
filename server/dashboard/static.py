"""Static files of the dashboard under /static/, and plotly.js from the installed plotly package.

plotly.js is served from the Python package (it ships the minified bundle) rather than copied
into the repository or loaded from a CDN: one copy, versioned with the package, works offline.
"""

from __future__ import annotations

import hashlib
import re
from functools import cache
from pathlib import Path

import plotly
from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

__all__ = ["STATIC_DIR", "asset_version", "plotly_js", "router"]

STATIC_DIR = Path(__file__).parent / "static"
MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
SAFE_NAME = re.compile(r"^[a-z][a-z0-9_-]*\.(js|css|svg)$")
# URLs carry ?v=<version>, so a browser may keep a file for a day and still see a new release at once.
CACHE = {"Cache-Control": "public, max-age=86400"}

router = APIRouter(prefix="/static", include_in_schema=False)


@cache
def plotly_js() -> Path:
    """plotly.min.js of the installed plotly package."""
    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():  # pragma: no cover - every plotly wheel ships it
        raise RuntimeError(f"plotly {plotly.__version__} has no package_data/plotly.min.js")
    return path


@cache
def asset_version() -> str:
    """A short hash of the dashboard's own static files, to bust browser caches when they change."""
    digest = hashlib.sha256()
    for path in sorted(STATIC_DIR.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:10]


@router.get("/plotly.min.js")
def plotly_bundle() -> FileResponse:
    return FileResponse(plotly_js(), media_type="text/javascript", headers=CACHE)


@router.get("/{name}")
def static_file(name: str) -> FileResponse:
    # Only plain file names of our own directory: no sub-paths, so nothing outside it can be named.
    path = STATIC_DIR / name
    if not SAFE_NAME.match(name) or not path.is_file():
        raise HTTPException(404, f"no static file {name!r}")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=CACHE)
