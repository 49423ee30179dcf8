"""GET /api/health: the database answers, and how many workers are live.

A live worker is one whose row is recent: each worker's heartbeat thread renews its row every
`heartbeat_s` while it runs, and removes it when the worker stops. A worker that died without
stopping (killed, its machine gone) stops counting once its row is older than `grace_s`, the time
after which its trials are taken to be dead and retried elsewhere. Counting every row seen in the
last minute, as before, counted a stopped worker beside its replacement after a restart.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy import func, select, text

from server.db.engine import db_after
from server.db.models import Worker
from server.settings import Settings

__all__ = ["live_window_s", "router"]

router = APIRouter(tags=["health"])


def live_window_s(settings: Settings) -> int:
    """How recent a worker's row must be for the worker to count as live (a few missed beats are allowed)."""
    return max(settings.grace_s, 3 * settings.heartbeat_s)


@router.get("/api/health")
def health(request: Request) -> dict:
    """The database answers; `workers`: how many workers are live (see the module's docstring), and
    `compute`: how many of them score on each compute ('cpu', 'cuda (the GPU's name)')."""
    with request.app.state.sessions() as session:
        session.execute(text("SELECT 1"))
        window = live_window_s(request.app.state.settings)
        recent = Worker.seen_at > db_after(-window)
        compute = dict(
            session.execute(select(Worker.compute, func.count()).where(recent).group_by(Worker.compute)).all()
        )
    return {"status": "ok", "workers": sum(compute.values()), "compute": compute}
