"""Server-sent events framing for chat completion chunks."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable

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
