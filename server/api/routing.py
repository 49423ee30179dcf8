"""JSON request bodies parsed as JSON, not as Python's superset of it.

Python's `json.loads` accepts `NaN`, `Infinity` and numbers too large for a float (read as infinity), and
decodes a lone `\\ud800`-style escape into a string that cannot be encoded back to UTF-8. None of these
are JSON text (RFC 8259), and each reached the service: an infinite budget was stored as a job spec the
workers cannot read back, and a refused NaN or lone surrogate made the 422 answer itself fail to render
(a 500). The API's routers use `JSONRoute`, so FastAPI's body parsing goes through `parse_json`; routes that
read a raw body call `parse_json` themselves.
"""

from __future__ import annotations

import email.message
import json
import math
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute

__all__ = ["JSONRoute", "parse_json"]


def parse_json(body: bytes) -> Any:
    """The JSON value of `body`; json.JSONDecodeError, with a message that says what to change, if it is not JSON.

    (FastAPI answers a JSONDecodeError with a 422 that carries its message and position.)
    """

    def doc() -> str:
        return body.decode("utf-8", "replace")

    def refuse(message: str, near: str = "") -> NoReturn:
        text = doc()
        raise json.JSONDecodeError(message, text, max(text.find(near), 0) if near else 0)

    def constant(name: str) -> NoReturn:
        refuse(f"{name} is not a JSON number; send a finite number (or null where the field allows it)", name)

    def finite(literal: str) -> float:
        value = float(literal)
        if not math.isfinite(value):
            refuse(f"{literal} is too large for a 64-bit float; send a finite number", literal)
        return value

    def integer(literal: str) -> int:
        try:
            return int(literal)
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            refuse(f"an integer of {len(literal)} digits is too long; send a smaller number", literal)

    try:
        value = json.loads(body, parse_constant=constant, parse_float=finite, parse_int=integer)
    except RecursionError:
        refuse("the body nests arrays or objects too deeply; no request of this API needs more than a few levels")
    except UnicodeDecodeError as error:
        refuse(f"the body is not UTF-8 text ({error.reason} at byte {error.start}); send JSON encoded as UTF-8")
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as error:
        refuse(
            "the body escapes a lone UTF-16 surrogate (\\ud800-\\udfff without its pair), which is not Unicode "
            f"text ({error.object[error.start : error.end]!a}); send the character itself or its full pair"
        )
    return value


class _JSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


def _is_json(content_type: str | None) -> bool:
    # The test FastAPI applies before it parses a body as JSON.
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


class JSONRoute(APIRoute):
    """An APIRoute whose request body, when FastAPI reads it as JSON, is parsed by `parse_json`.

    A route that takes a JSON body refuses other content types with a 415: FastAPI would otherwise validate
    the raw bytes, and its 422 answer, which quotes them, fails to render when they are not UTF-8 (a 500).
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        takes_json = self.body_field is not None

        async def route(request: Request) -> Response:
            request = _JSONRequest(request.scope, request.receive)
            content_type = request.headers.get("content-type")
            if takes_json and not _is_json(content_type) and await request.body():
                raise HTTPException(
                    415, f"the body is {content_type or 'of no declared type'}; send JSON, as application/json"
                )
            return await handler(request)

        return route
