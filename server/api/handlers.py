"""Renders every error as OpenAI's error body with the right status; never FastAPI's 422."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from server.api.asgi_errors import TrackedSend, send_error
from server.protocol.errors import APIError, InternalError, error_body, printable

logger = logging.getLogger(__name__)


def _param(loc: tuple[Any, ...], body: Any) -> str | None:
    """`('body', 'messages', 0, 'user', 'content')` -> `messages[0].content`: keeps only the steps
    that exist in the body (or name the missing field at the end), dropping pydantic's union tags."""
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    path = ""
    node = body
    for position, part in enumerate(parts):
        last = position == len(parts) - 1
        following = None if last else parts[position + 1]
        if _is_union_tag(part, following, node):
            continue
        if isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node):
            path += f"[{part}]"
            node = node[part]
        elif isinstance(part, str) and isinstance(node, dict) and (part in node or last):
            path += f".{part}" if path else part
            node = node.get(part)
    return path or None


def _is_union_tag(part: Any, following: Any, node: Any) -> bool:
    """A discriminated union's tag in the path ("text" for a text part) can also be a key of the
    value ("text"): it is the tag when the step after it is a key of this value, not of that key's."""
    if not (isinstance(part, str) and isinstance(following, str) and isinstance(node, dict)):
        return False
    inner = node.get(part)
    return following in node and not (isinstance(inner, dict) and following in inner)


def _validation_message(error: dict[str, Any], param: str | None) -> str:
    kind = error.get("type", "")
    if kind == "json_invalid":
        return "We could not parse the JSON body of your request. The body must be valid JSON."
    if kind == "missing" and param:
        return f"Missing required parameter: '{param}'."
    if kind == "extra_forbidden" and param:
        return f"Unrecognized request argument supplied: {param}"
    msg = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"Invalid value for '{param}': {msg}" if param else msg


def _most_relevant(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """Unions report one error per branch; the deepest is the one that says what is wrong."""
    unknown = [e for e in errors if e.get("type") == "extra_forbidden"]
    if unknown:
        return unknown[0]
    return max(errors, key=lambda e: len(e.get("loc", ())))


async def _json_body(request: Request) -> Any:
    # The handler gets the request object the route read, so its body is cached.
    try:
        return await request.json()
    except Exception:
        return None


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    if not errors:
        return JSONResponse(error_body("Invalid request.", "invalid_request_error"), status_code=400)
    first = _most_relevant(errors)
    if first.get("type") == "missing" and tuple(first.get("loc", ())) == ("body",):
        body = error_body("The request needs a JSON body.", "invalid_request_error")
        return JSONResponse(body, status_code=400)
    raw = await _json_body(request)
    param = _param(tuple(first.get("loc", ())), raw)
    body = error_body(_validation_message(first, param), "invalid_request_error", param, "invalid_value")
    if first.get("type") == "json_invalid":
        body["error"]["code"] = "invalid_json"
        body["error"]["param"] = None
    return JSONResponse(body, status_code=400)


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    if exc.status >= 500:
        logger.error("request failed: %s", exc.message)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers or None)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    message = str(exc.detail)
    path = printable(request.url.path)
    if exc.status_code == 404:
        message = f"Unknown request URL: {request.method} {path}."
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {path}."
    return JSONResponse(error_body(message, kind), status_code=exc.status_code, headers=exc.headers)


class CatchUnexpected:
    """ASGI middleware: an exception no handler knows (a bug) becomes a 500 in OpenAI's shape and
    the connection stays usable. Starlette's own last-resort handler answers and then re-raises,
    so the server closed the keep-alive connection under the client, whose next pooled request
    failed with "connection reset". Once a response has started, nothing can be added to it:
    the exception goes on (and the connection is closed)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracked = TrackedSend(send)
        try:
            await self.app(scope, receive, tracked)
        except Exception:
            if tracked.started:
                raise
            logger.exception("unexpected error on %s %s", scope["method"], printable(scope["path"]))
            error = InternalError("The server had an error while processing your request.")
            await send_error(send, error)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(APIError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
