"""Server-sent events: framing chat completion chunks, and the response that sends them."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from server.api.errors import APIError, InternalError

logger = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"


def event(model: BaseModel) -> bytes:
    return b"data: " + model.model_dump_json(exclude_unset=True).encode() + b"\n\n"


def error_event(error: APIError) -> bytes:
    return b"data: " + json.dumps(error.body()).encode() + b"\n\n"


async def encode(
    chunks: AsyncIterator[BaseModel], on_error: Callable[[APIError], None] | None = None
) -> AsyncIterator[bytes]:
    """Frames every chunk; a failure mid-stream ends it with an error event (also handed to
    `on_error`), then [DONE]."""
    error: APIError | None = None
    try:
        async for chunk in chunks:
            yield event(chunk)
    except APIError as exc:
        error = exc
    except Exception:
        logger.exception("stream failed")
        error = InternalError("The server failed while generating this response.")
    if error is not None:
        if on_error is not None:
            on_error(error)
        yield error_event(error)
    yield DONE


class _Stalled(Exception):
    pass


class EventStreamResponse(StreamingResponse):
    """A stream whose client stops reading is given up: once one write has waited `stalled_after_s`
    for the client (the socket's buffers full, nothing taken), the response ends there, its
    generator is closed (which aborts the generation) and the connection is dropped. Before that,
    the engine has already parked the stream's unread choices, so they held no batch slot."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        stalled_after_s: float | None,
        on_stalled: Callable[[], None],
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self._content = content
        self._stalled_after_s = stalled_after_s
        self._on_stalled = on_stalled

    async def stream_response(self, send: Any) -> None:
        limit = self._stalled_after_s
        if limit is None:
            await super().stream_response(send)
            return

        async def bounded_send(message: dict) -> None:
            try:
                await asyncio.wait_for(send(message), limit)
            except TimeoutError:
                raise _Stalled from None

        await super().stream_response(bounded_send)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except _Stalled:
            logger.warning("client stopped reading for %.0f s: stream abandoned", self._stalled_after_s)
            self._on_stalled()
            await self._content.aclose()  # type: ignore[attr-defined]
