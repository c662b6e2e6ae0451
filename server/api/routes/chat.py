"""POST /v1/chat/completions: the only place that looks at `stream`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.api import openapi, sse
from server.api.json_checks import check_json
from server.api.obfuscation import Obfuscator
from server.api.observability import note_error
from server.chat import aggregate
from server.chat.service import ChatService
from server.protocol.request import ChatCompletionRequest

T = TypeVar("T")

logger = logging.getLogger(__name__)
router = APIRouter()


# Bodies larger than this are checked off the event loop (a walk of every value they hold).
_CHECK_ON_LOOP_BYTES = 64 * 1024


@router.post("/v1/chat/completions", response_model=None, responses=openapi.CHAT_COMPLETION)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    service: ChatService = request.app.state.chat_service
    # The parsed body (Starlette keeps it): lone surrogates, NaN and deep nesting are 400s here.
    raw, depth = await request.json(), service.limits.max_json_depth
    if len(await request.body()) > _CHECK_ON_LOOP_BYTES:
        await asyncio.to_thread(check_json, raw, depth)
    else:
        check_json(raw, depth)
    # A metrics label: only configured ids, so clients cannot grow the label set.
    registry = request.app.state.registry
    request.state.model = registry.slot(body.model).spec.id if body.model in registry.names else ""
    request.state.end_user = body.safety_identifier or body.user  # an id, for the access log
    stream = await service.start(body, project=request.state.project)
    if body.stream:
        # The status line waits for the request's place in the batch: a refusal is still a 429.
        try:
            await _unless_disconnected(stream.admitted(), request)
        except _ClientGone:
            return Response(status_code=499)
        options = body.stream_options
        obfuscated = options is None or options.include_obfuscation is not False
        return sse.EventStreamResponse(
            sse.encode(
                stream.for_client(),
                on_error=lambda error: note_error(request, error),
                frame=Obfuscator().event if obfuscated else sse.event,
            ),
            stalled_after_s=request.app.state.stalled_stream_timeout_s,
            on_stalled=request.app.state.metrics.stalled_streams.inc,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    try:
        completion = await _unless_disconnected(aggregate.fold(stream), request)
    except _ClientGone:
        return Response(status_code=499)  # nobody is there to read it
    return Response(completion.model_dump_json(exclude_unset=True), media_type="application/json")


class _ClientGone(Exception):
    pass


async def _unless_disconnected(work: Awaitable[T], request: Request) -> T:
    """Awaits `work`, but cancels it (and so stops its generation) as soon as the client goes away
    (then raises _ClientGone); what `work` raises propagates."""
    working = asyncio.ensure_future(work)
    watching = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({working, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
    if working.done():
        return working.result()
    working.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await working
    logger.info("client disconnected; generation stopped")
    raise _ClientGone


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
