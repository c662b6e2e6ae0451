import json
from collections.abc import AsyncIterator

from openai.types.chat import ChatCompletionChunk

from server.api import sse
from server.protocol.errors import InternalError

CHUNK = ChatCompletionChunk(id="chatcmpl-1", object="chat.completion.chunk", created=1, model="m", choices=[])


async def _failing() -> AsyncIterator[ChatCompletionChunk]:
    yield CHUNK
    raise InternalError("Generation failed: boom")


async def _crashing() -> AsyncIterator[ChatCompletionChunk]:
    yield CHUNK
    raise RuntimeError("unexpected")


async def test_error_mid_stream_ends_with_error_event_then_done() -> None:
    frames = [frame async for frame in sse.encode(_failing())]
    assert frames[-1] == b"data: [DONE]\n\n"
    error = json.loads(frames[-2].removeprefix(b"data: "))["error"]
    assert error["message"] == "Generation failed: boom" and error["type"] == "server_error"


async def test_unexpected_exception_mid_stream_is_an_error_event_too() -> None:
    frames = [frame async for frame in sse.encode(_crashing())]
    assert json.loads(frames[1].removeprefix(b"data: "))["error"]["code"] == "internal_error"
    assert frames[-1] == b"data: [DONE]\n\n"
