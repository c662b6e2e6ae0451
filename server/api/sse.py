"""Server-sent events framing for chat completion chunks."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

from pydantic import BaseModel

from server.api.errors import APIError, InternalError

logger = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"


def event(model: BaseModel) -> bytes:
    return b"data: " + model.model_dump_json(exclude_unset=True).encode() + b"\n\n"


def error_event(error: APIError) -> bytes:
    return b"data: " + json.dumps(error.body()).encode() + b"\n\n"


async def encode(chunks: AsyncIterator[BaseModel]) -> AsyncIterator[bytes]:
    """Frames every chunk; a failure mid-stream ends it with an error event, then [DONE]."""
    try:
        async for chunk in chunks:
            yield event(chunk)
    except APIError as exc:
        yield error_event(exc)
    except Exception:
        logger.exception("stream failed")
        yield error_event(InternalError("The server failed while generating this response."))
    yield DONE
