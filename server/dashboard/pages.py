"""The dashboard's pages. Each is a template shell; its script fetches the REST API and fills it in.

Rendering data in the browser (instead of in the template) lets every page refresh itself while a
job runs, and keeps one source of truth for what the API returns.
"""

from __future__ import annotations

import pathlib
from typing import Annotated, Any

import plotly
from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from pruning.tokens import TOKEN_OPS
from search.job import SAMPLERS, TOKEN_MODES, JobSpec, SearchSpace
from server.dashboard.static import asset_version
from server.db.models import Job, PrunedModel

__all__ = ["router"]

templates = Jinja2Templates(directory=pathlib.Path(__file__).parent / "templates")
router = APIRouter(include_in_schema=False)

# JobSpec fields whose defaults the form shows (the others are required or have no form field).
FORM_DEFAULTS = ("batch", "trials", "sampler", "holdout", "seed", "recover", "onnx")

Id = Annotated[int, Path(ge=1, lt=2**31)]


def _render(
    request: Request, template: str, page: str, title: str, status_code: int = 200, **context: Any
) -> HTMLResponse:
    common = {
        "page": page,
        "title": title,
        "asset_version": asset_version(),
        "plotly_version": plotly.__version__,
        # How each token op changes token counts, for the pages' token plots (app.js tokenCounts).
        "token_rules": {kind: op.count_rule for kind, op in TOKEN_OPS.items() if op.count_rule},
    }
    return templates.TemplateResponse(request, template, common | context, status_code=status_code)


def _exists(request: Request, table: type[Job] | type[PrunedModel], key: int) -> bool:
    with request.app.state.sessions() as session:
        return session.get(table, key) is not None


def _not_found(request: Request, what: str) -> HTMLResponse:
    # A real 404 (not an empty shell that fails later) for links to deleted or mistyped ids.
    return _render(request, "not_found.html", "missing", "Not found", status_code=404, what=what)


@router.get("/", response_class=HTMLResponse)
def jobs_page(request: Request) -> HTMLResponse:
    return _render(request, "jobs.html", "jobs", "Jobs")


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: Id) -> HTMLResponse:
    if not _exists(request, Job, job_id):
        return _not_found(request, f"job {job_id}")
    return _render(request, "job.html", "job", f"Job {job_id}", job_id=job_id)


@router.get("/models/{model_id}", response_class=HTMLResponse)
def model_page(request: Request, model_id: Id) -> HTMLResponse:
    if not _exists(request, PrunedModel, model_id):
        return _not_found(request, f"model {model_id}")
    return _render(request, "model.html", "model", f"Model {model_id}", model_id=model_id)


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request) -> HTMLResponse:
    return _render(request, "compare.html", "compare", "Compare jobs")


@router.get("/submit", response_class=HTMLResponse)
def submit_page(request: Request) -> HTMLResponse:
    # The form's defaults come from the schema itself, so the page never drifts from what the API assumes.
    defaults = {name: JobSpec.model_fields[name].default for name in FORM_DEFAULTS}
    return _render(
        request,
        "submit.html",
        "submit",
        "New job",
        defaults=defaults,
        space=SearchSpace(),
        samplers=SAMPLERS,
        token_modes=TOKEN_MODES,
    )
