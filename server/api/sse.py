"""Server-sent events: framing chat completion chunks, and the response that sends them."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, MutableMapping
from typing import Any

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from server.protocol.errors import APIError, InternalError

logger = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"


def event(model: BaseModel) -> bytes:
    return b"data: " + model.model_dump_json(exclude_unset=True).encode() + b"\n\n"


def error_event(error: APIError) -> bytes:
    return b"data: " + json.dumps(error.body()).encode() + b"\n\n"


async def encode(
    chunks: AsyncIterator[BaseModel],
    on_error: Callable[[APIError], None] | None = None,
    frame: Callable[[BaseModel], bytes] = event,
) -> AsyncIterator[bytes]:
    """Frames every chunk (with `frame`); a failure mid-stream ends it with an error event (also
    handed to `on_error`), then [DONE]."""
    error: APIError | None = None
    try:
        async for chunk in chunks:
            yield frame(chunk)
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


class EventStreamResponse(StreamingResponse):
    """A stream whose client stops reading is given up: once one write has waited `stalled_after_s`
    for the client (the socket's buffers full, nothing taken), the request's task is cancelled,
    its generator closed (which aborts the generation) and the connection dropped. Before that,
    the engine has already parked the stream's unread choices, so they held no batch slot.

    One timer per stream checks the write in progress, a few times per `stalled_after_s`
    (a timeout around every write would cost a task per token)."""

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
        self._stalled = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        limit = self._stalled_after_s
        if limit is None:
            await super().__call__(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        request = asyncio.current_task()
        writing_since: float | None = None
        watchdog: asyncio.TimerHandle | None = None

        async def timed_send(message: MutableMapping[str, Any]) -> None:
            nonlocal writing_since
            writing_since = loop.time()
            try:
                await send(message)
            finally:
                writing_since = None

        def check() -> None:
            nonlocal watchdog
            if writing_since is not None and loop.time() - writing_since >= limit and request is not None:
                self._stalled = True
                logger.warning("client stopped reading for %.0f s: stream given up", limit)
                self._on_stalled()
                request.cancel()
                return
            watchdog = loop.call_later(limit / 4, check)

        watchdog = loop.call_later(limit / 4, check)
        try:
            await super().__call__(scope, receive, timed_send)
        except asyncio.CancelledError:
            if self._stalled:
                await self._content.aclose()  # type: ignore[attr-defined]
            raise
        finally:
            if watchdog is not None:
                watchdog.cancel()
