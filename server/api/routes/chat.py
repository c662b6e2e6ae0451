"""POST /v1/chat/completions: the only place that looks at `stream`."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from openai.types.chat import ChatCompletion

from server.api import sse
from server.api.schemas.request import ChatCompletionRequest
from server.chat import aggregate
from server.chat.service import ChatService, ChatStream

logger = logging.getLogger(__name__)
router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    service: ChatService = request.app.state.chat_service
    stream = await service.start(body, project=request.state.project)
    if body.stream:
        return StreamingResponse(
            sse.encode(stream.for_client()),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    completion = await _fold_unless_disconnected(stream, request)
    if completion is None:
        return Response(status_code=499)  # nobody is there to read it
    return Response(completion.model_dump_json(exclude_unset=True), media_type="application/json")


async def _fold_unless_disconnected(stream: ChatStream, request: Request) -> ChatCompletion | None:
    """Builds the whole completion, but stops generating as soon as the client goes away."""
    folding = asyncio.ensure_future(aggregate.fold(stream))
    watching = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({folding, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
    if folding.done():
        return folding.result()
    folding.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await folding
    logger.info("client disconnected; generation stopped")
    return None


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
