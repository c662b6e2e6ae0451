"""Errors answered straight from ASGI middleware, before (or instead of) any route."""

from __future__ import annotations

import json
from typing import Any

from server.protocol.errors import APIError


async def send_error(send: Any, error: APIError, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    """Answers with `error` straight from ASGI middleware (before any route has run)."""
    payload = json.dumps(error.body()).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    head += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": [*head, *headers]})
    await send({"type": "http.response.body", "body": payload})


class TrackedSend:
    """An ASGI `send` that remembers whether the response has started (its status line is out):
    after that, an error can no longer be answered, only the connection dropped."""

    def __init__(self, send: Any) -> None:
        self._send = send
        self.started = False

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)
