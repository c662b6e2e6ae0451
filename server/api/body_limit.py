"""The request body's size limit, enforced as the body arrives (before anything parses it)."""

from __future__ import annotations

import asyncio
from typing import Any

from server.api.asgi_errors import send_error
from server.protocol.errors import APIError, InvalidRequest, ShuttingDown


class BodyTooLarge(InvalidRequest):
    code = "request_too_large"


class BodyTimeout(APIError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


# Sent with every refusal made before the body was read whole: the connection cannot be reused.
_CLOSE = ((b"connection", b"close"),)


class BodyLimit:
    """ASGI middleware: the body is read here first, and one over `max_bytes` (by Content-Length,
    or once that many bytes have arrived) is refused before anything parses it; one not received
    whole within `timeout_s` is answered 408 (a client sending a byte now and then holds nothing
    for long), and one still arriving when the server starts draining gets 503 at once. Bodies are
    small (prompts), so holding one in memory before the app reads it costs nothing."""

    def __init__(
        self, app: Any, max_bytes: int, timeout_s: float, abandon: asyncio.Event | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.abandon = abandon

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await send_error(send, self._too_large(), headers=_CLOSE)
            return
        reading = asyncio.ensure_future(self._read(receive))
        waits: set[asyncio.Future[Any]] = {reading}
        if self.abandon is not None:
            waits.add(asyncio.ensure_future(self.abandon.wait()))
        try:
            await asyncio.wait(waits, timeout=self.timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        if not reading.done() or reading.cancelled():
            if self.abandon is not None and self.abandon.is_set():
                refusal: APIError = ShuttingDown("The server is shutting down and takes no new requests.")
            else:
                refusal = BodyTimeout(f"The request body was not received within {self.timeout_s:g} seconds.")
            await send_error(send, refusal, headers=_CLOSE)
            return
        body = reading.result()
        if body is None:  # the client left
            return
        if len(body) > self.max_bytes:
            await send_error(send, self._too_large(), headers=_CLOSE)
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls: disconnect detection

        await self.app(scope, replay, send)

    async def _read(self, receive: Any) -> bytes | None:
        """The whole body (stopping once it is over the limit), or None when the client left."""
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self.max_bytes:
                break
        return b"".join(chunks)

    def _too_large(self) -> BodyTooLarge:
        return BodyTooLarge(f"The request body is larger than this server's limit of {self.max_bytes} bytes.")
