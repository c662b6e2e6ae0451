"""Request limits from the server config: body size (as the body arrives), then field by field."""

from __future__ import annotations

from typing import Any

from server.api.errors import InvalidRequest, send_error
from server.api.schemas.request import ChatCompletionRequest
from server.config import RequestLimits


class BodyTooLarge(InvalidRequest):
    code = "request_too_large"


class BodyLimit:
    """ASGI middleware: the body is read here first, and one over `max_bytes` (by Content-Length,
    or once that many bytes have arrived) is refused before anything parses it. Bodies are small
    (prompts), so holding one in memory before the app reads it costs nothing."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._refuse(send)
                return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls: disconnect detection

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any) -> None:
        message = f"The request body is larger than this server's limit of {self.max_bytes} bytes."
        await send_error(send, BodyTooLarge(message))


def check_limits(request: ChatCompletionRequest, limits: RequestLimits) -> None:
    def over(param: str, value: int, limit: int) -> None:
        if value > limit:
            raise InvalidRequest(
                f"Invalid '{param}': {value} is more than this server allows ({limit}).", param=param
            )

    over("messages", len(request.messages), limits.max_messages)
    over("n", request.n or 1, limits.max_n)
    over("tools", len(request.tools or []), limits.max_tools)
    over("functions", len(request.functions or []), limits.max_tools)
    over("stop", len(request.stop_sequences), limits.max_stop)
    if limits.max_tokens is not None:
        for param in ("max_tokens", "max_completion_tokens"):
            value = getattr(request, param)
            if value is not None:
                over(param, value, limits.max_tokens)
