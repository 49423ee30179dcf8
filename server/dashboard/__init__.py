"""The web dashboard: HTML pages that read the REST API from the browser, and their static files.

Pages are plain templates plus a little JavaScript (no build step, nothing fetched from a CDN), so
the dashboard works on an air-gapped machine with nothing but the Python package installed.
"""

from __future__ import annotations

from fastapi import APIRouter

from server.dashboard import pages, static

__all__ = ["router"]

router = APIRouter(include_in_schema=False)
router.include_router(static.router)
router.include_router(pages.router)
