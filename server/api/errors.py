"""422 answers a person can act on: which field is wrong and what to send instead.

FastAPI's own 422 is pydantic's error list (`loc`, `msg`, `type`, the offending `input`, an `url`),
a shape no other answer of this API has, and one that says "Input should be ..." without naming the
field in words. Every 422 here is instead

    {"detail": "spec.budget_ratio: should be less than or equal to 1 (got 5)",
     "errors": [{"field": "spec.budget_ratio", "loc": ["body", "spec", "budget_ratio"],
                 "message": "should be less than or equal to 1 (got 5)", "type": "less_than_equal"}]}

`detail` is a sentence, like every other error's; `errors` is the machine-readable list, one entry per
problem (`field` dotted as in the request, `loc` as FastAPI locates it: body, query or path first).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

__all__ = ["FieldProblem", "ValidationAnswer", "describe_errors", "document_validation_answers", "validation_error"]

SOURCES = {"body": "", "query": "query parameter ", "path": "path parameter ", "header": "header ", "cookie": "cookie "}
SHOWN_INPUT = 60
"""Longest echo of a refused value; the caller sent it, a long one only buries the message."""
SHOWN_ERRORS = 10
"""Errors the sentence names; `errors` lists them all."""

# pydantic error types whose message is better said another way, with what to do about it.
REWORDED = {
    "missing": "is required; add it",
    "extra_forbidden": "is not a field of this request; remove it or check its spelling",
    "model_attributes_type": "should be a JSON object",
    "dict_type": "should be a JSON object",
    "model_type": "should be a JSON object",
    "int_parsing": "should be a whole number",
    "int_from_float": "should be a whole number",
    "int_type": "should be a whole number",
    "float_parsing": "should be a number",
    "float_type": "should be a number",
    "bool_parsing": "should be true or false",
    "string_type": "should be text (a JSON string)",
}


class FieldProblem(BaseModel):
    """One reason a request did not validate."""

    field: str = Field(description="where, as the request names it: 'spec.budget_ms', 'query parameter limit'")
    loc: list[str | int] = Field(description="where, as FastAPI locates it: body, query or path, then the keys")
    message: str = Field(description="what is wrong and what to send instead")
    type: str = Field(description="pydantic's error type, e.g. 'missing', 'less_than_equal'")


class ValidationAnswer(BaseModel):
    """A 422: the request's body, query or path did not validate."""

    detail: str = Field(description="a sentence naming every field to fix and how")
    errors: list[FieldProblem]


def document_validation_answers(app: FastAPI) -> None:
    """Make the OpenAPI schema promise the 422 answers this module sends, not FastAPI's own shape.

    Every operation's 422 refers to the component HTTPValidationError; it is replaced by ValidationAnswer.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        answer = ValidationAnswer.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(answer.pop("$defs", {}))
        components["HTTPValidationError"] = answer | {"title": "HTTPValidationError"}
        components.pop("ValidationError", None)  # FastAPI's item type, referred to by nothing now
        return schema

    app.openapi = openapi


async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """The handler FastAPI calls for a request whose body, query or path does not validate."""
    errors = describe_errors(error.errors())
    return JSONResponse({"detail": _sentence(errors), "errors": errors}, status_code=422)


def describe_errors(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """pydantic's errors as `{field, loc, message, type}`, each message saying what to send."""
    return [
        {
            "field": _field(item.get("loc", ())),
            "loc": [_plain(part) for part in item.get("loc", ())],
            "message": _message(item),
            "type": str(item.get("type", "")),
        }
        for item in raw
    ]


def _sentence(errors: list[dict[str, Any]]) -> str:
    named = [f"{e['field']}: {e['message']}" for e in errors[:SHOWN_ERRORS]]
    if len(errors) > SHOWN_ERRORS:
        named.append(f"and {len(errors) - SHOWN_ERRORS} more (see errors)")
    if len(errors) == 1:
        return named[0]
    return f"{len(errors)} fields to fix - " + "; ".join(named)


def _field(loc: tuple | list) -> str:
    """`('body', 'spec', 'budget_ms')` -> 'spec.budget_ms'; `('query', 'format')` -> 'query parameter format'."""
    parts = list(loc)
    prefix = ""
    if parts and parts[0] in SOURCES:
        prefix = SOURCES[parts.pop(0)]
    path = ""
    for part in parts:
        if isinstance(part, int):
            # A list index names an item; JSON decoding errors put the position here, which is no field.
            path += f"[{part}]" if path else ""
        else:
            path += f".{part}" if path else str(part)
    return _plain(f"{prefix}{path}" if path else (prefix.strip() or "body"))


def _message(item: dict[str, Any]) -> str:
    kind = str(item.get("type", ""))
    ctx = item.get("ctx") or {}
    if kind == "json_invalid":
        reason = ctx.get("error")
        where = next((part for part in item.get("loc", ())[1:] if isinstance(part, int)), None)
        at = f" at character {where}" if where is not None else ""
        return _plain(f"is not valid JSON{at}" + (f": {reason}" if reason else "") + "; send a JSON object")
    if kind in REWORDED:
        text = REWORDED[kind]
    else:
        text = str(item.get("msg", "is not valid"))
        text = text.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if text.startswith("Input should "):
            text = "should " + text.removeprefix("Input should ")
    shown = _shown_input(item.get("input"), kind)
    return _plain(f"{text} (got {shown})" if shown else text)


def _shown_input(value: Any, kind: str) -> str | None:
    """The refused value, when it is a short scalar worth echoing (not for missing or unknown fields)."""
    if kind in ("missing", "extra_forbidden") or isinstance(value, dict | list) or value is None:
        return None
    if not isinstance(value, str | int | float | bool):
        return None
    text = repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
    return text if len(text) <= SHOWN_INPUT else f"{text[: SHOWN_INPUT - 3]}..."


def _plain(value: Any) -> Any:
    """Text that encodes as UTF-8 (a lone surrogate in a refused value must not break the answer)."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value if isinstance(value, int | float) else _plain(str(value))
