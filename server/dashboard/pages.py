"""The dashboard's pages. Each is a template shell; its script fetches the REST API and fills it in.

Rendering data in the browser (instead of in the template) lets every page refresh itself while a
job runs, and keeps one source of truth for what the API returns.
"""

from __future__ import annotations

import pathlib
import re
import typing
from typing import Any

import plotly
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from pruning.tokens import TOKEN_OPS
from pruning.tokens.merge import MERGE_STEP
from pruning.tokens.topk import KEEP_STEP
from search.job import SAMPLERS, TOKEN_MODES, FineTuneJob, JobSpec, SearchSpace
from search.objectives import OBJECTIVES
from server.api.schemas import JobSubmit
from server.dashboard.static import asset_version
from server.db.models import Job, PrunedModel

__all__ = ["router"]

templates = Jinja2Templates(directory=pathlib.Path(__file__).parent / "templates")
router = APIRouter(include_in_schema=False)

# JobSpec fields whose defaults the form shows (the others are required or have no form field).
FORM_DEFAULTS = ("batch", "trials", "sampler", "objective", "holdout", "seed", "recover", "onnx")

# Number fields of the form, by the schema that holds them; the form checks them with the schema's bounds.
JOB_NUMBERS = (
    "batch",
    "budget_ms",
    "budget_ratio",
    "holdout",
    "calib_images",
    "val_images",
    "trials",
    "cheap_first",
    "seed",
)
SPACE_NUMBERS = ("keep_min", "group", "merge_group", "merge_max", "keep_float")
FINE_TUNE_NUMBERS = {"fine_tune_models": "models", "fine_tune_steps": "steps"}
"""Form field -> its FineTuneJob field."""

# A page's id as typed in the address: anything that is not a stored id's form (1 to 2**31 - 1, the
# database's integer) names nothing, so it gets the not-found page, not the API's JSON 422.
ID_FORM = re.compile(r"[0-9]{1,10}")
MAX_ID = 2**31 - 1
# Bidirectional controls in an address shown back on the page would reorder the text around them.
BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")


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


def _stored_id(request: Request, table: type[Job] | type[PrunedModel], text: str) -> int | None:
    """`text` as the id of a stored row of `table`, or None: not an id (the database is not asked) or no such row."""
    if not ID_FORM.fullmatch(text) or not 1 <= int(text) <= MAX_ID:
        return None
    with request.app.state.sessions() as session:
        return int(text) if session.get(table, int(text)) is not None else None


def _not_found(request: Request, kind: str, text: str) -> HTMLResponse:
    # A real 404 (not an empty shell that fails later) for links to deleted or mistyped ids.
    text = BIDI_CONTROLS.sub("", text)
    shown = text if len(text) <= 24 else f"{text[:24]}…"
    return _render(request, "not_found.html", "missing", "Not found", status_code=404, kind=kind, shown=shown)


@router.get("/", response_class=HTMLResponse)
def jobs_page(request: Request) -> HTMLResponse:
    return _render(request, "jobs.html", "jobs", "Jobs")


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str) -> HTMLResponse:
    if (found := _stored_id(request, Job, job_id)) is None:
        return _not_found(request, "job", job_id)
    return _render(request, "job.html", "job", f"Job {found}", job_id=found)


@router.get("/models/{model_id}", response_class=HTMLResponse)
def model_page(request: Request, model_id: str) -> HTMLResponse:
    if (found := _stored_id(request, PrunedModel, model_id)) is None:
        return _not_found(request, "model", model_id)
    return _render(request, "model.html", "model", f"Model {found}", model_id=found)


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request) -> HTMLResponse:
    return _render(request, "compare.html", "compare", "Compare jobs")


def _number_rule(field: Any) -> dict[str, Any]:
    """A number field's bounds (ge, gt, le, lt) and whether it takes whole numbers only."""
    rule: dict[str, Any] = {"integer": int in (field.annotation, *typing.get_args(field.annotation))}
    for constraint in field.metadata:
        for bound in ("ge", "gt", "le", "lt"):
            if getattr(constraint, bound, None) is not None:
                rule[bound] = getattr(constraint, bound)
    return rule


def form_rules() -> dict[str, Any]:
    """What the submit form checks before it sends a job, read from the schema so the two never drift apart:
    every field's error shows at once, where the API (which still checks everything) stops at the first
    error of a kind."""
    numbers = {name: _number_rule(JobSpec.model_fields[name]) for name in JOB_NUMBERS}
    numbers |= {name: _number_rule(SearchSpace.model_fields[name]) for name in SPACE_NUMBERS}
    numbers |= {name: _number_rule(FineTuneJob.model_fields[field]) for name, field in FINE_TUNE_NUMBERS.items()}
    name_max = next(c.max_length for c in JobSubmit.model_fields["name"].metadata if hasattr(c, "max_length"))
    return {"numbers": numbers, "keep_step": KEEP_STEP, "merge_step": MERGE_STEP, "name_max": name_max}


@router.get("/submit", response_class=HTMLResponse)
def submit_page(request: Request) -> HTMLResponse:
    # The form's defaults come from the schema itself, so the page never drifts from what the API assumes.
    defaults = {name: JobSpec.model_fields[name].default for name in FORM_DEFAULTS}
    defaults["fine_tune_steps"] = FineTuneJob.model_fields["steps"].default
    return _render(
        request,
        "submit.html",
        "submit",
        "New job",
        defaults=defaults,
        space=SearchSpace(),
        samplers=SAMPLERS,
        objectives=OBJECTIVES.values(),
        token_modes=TOKEN_MODES,
        rules=form_rules(),
    )
