"""Request ids, access log lines and request metrics, for every HTTP request (ASGI middleware).

The request id is the caller's `x-request-id` when it is a sane token, otherwise a new one; it is
echoed in the response's `x-request-id` header and carried by every log line written while the
request is served. Prompts and outputs never appear here.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from fastapi import Request

from server.logs import install_request_ids, request_id_var
from server.metrics import Metrics
from server.protocol.errors import APIError, printable

access_logger = logging.getLogger("server.access")

_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_ERROR_BODY_LIMIT = 64 * 1024  # error bodies are small; larger responses are never inspected


def note_error(request: Request, error: APIError) -> None:
    """A stream that ended with an error event: its status line said 200, the metrics should not."""
    request.state.stream_error = (error.type, error.code or "")


def _request_id(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _SANE_REQUEST_ID.fullmatch(text):
                return text
    return uuid.uuid4().hex


def _error_of(body: bytes) -> tuple[str, str] | None:
    try:
        error = json.loads(body)["error"]
        return str(error.get("type") or ""), str(error.get("code") or "")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class Observability:
    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        install_request_ids()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        request_id = _request_id(scope.get("headers") or [])
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        token = request_id_var.set(request_id)
        status = 500
        error: tuple[str, str] | None = None
        inspect_body = False

        async def send_with_id(message: dict) -> None:
            nonlocal status, error, inspect_body
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                inspect_body = status >= 400
            elif message["type"] == "http.response.body" and inspect_body:
                inspect_body = False
                body = message.get("body", b"")
                if len(body) <= _ERROR_BODY_LIMIT and not message.get("more_body", False):
                    error = _error_of(body)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
            self._record(scope, state, status, error, time.monotonic() - started, request_id)

    def _record(
        self,
        scope: dict,
        state: dict,
        status: int,
        error: tuple[str, str] | None,
        seconds: float,
        request_id: str,
    ) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        method = scope["method"]
        model = str(state.get("model") or "")
        error = state.get("stream_error") or error
        if status >= 500 and error is None:
            error = ("server_error", "")
        m = self.metrics
        m.requests.labels(method, route, str(status), model).inc()
        m.request_duration.labels(method, route).observe(seconds)
        if error is not None:
            m.errors.labels(*error).inc()
        client = scope.get("client")
        end_user = printable(str(state["end_user"]), 128) if state.get("end_user") else None
        access_logger.info(
            '%s "%s %s" %d %.1f ms%s%s',
            client[0] if client else "-",
            method,
            scope.get("path", ""),
            status,
            seconds * 1000,
            f" error={error[0]}/{error[1]}" if error else "",
            f" user={end_user!r}" if end_user else "",
            extra={
                "access": {
                    "request_id": request_id,
                    "client": client[0] if client else None,
                    "method": method,
                    "path": scope.get("path", ""),
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 1),
                    "model": model or None,
                    "project": state.get("project") or None,
                    "end_user": end_user,
                    "error_type": error[0] if error else None,
                    "error_code": (error[1] or None) if error else None,
                }
            },
        )
