"""Cancellation reaches the engine: a closed stream frees its sequence."""

import asyncio

import pytest
from fastapi import FastAPI

from server.protocol.request import ChatCompletionRequest


async def _wait_idle(engine, seconds: float = 5.0) -> bool:
    for _ in range(int(seconds / 0.02)):
        if engine.num_running == 0:
            return True
        await asyncio.sleep(0.02)
    return False


async def test_closing_a_stream_aborts_its_generation(tiny_app: FastAPI) -> None:
    service = tiny_app.state.chat_service
    engine = tiny_app.state.registry.get("tiny").engine.engine
    request = ChatCompletionRequest.model_validate(
        {"model": "tiny", "messages": [{"role": "user", "content": "go"}], "max_tokens": 400, "n": 2}
    )
    stream = await service.start(request)
    chunks = aiter(stream)
    for _ in range(6):
        await anext(chunks)
    assert engine.num_running == 2
    await stream.aclose()
    assert await _wait_idle(engine)


async def test_stop_string_aborts_the_sequence(tiny_app: FastAPI, client) -> None:
    engine = tiny_app.state.registry.get("tiny").engine.engine
    first = await client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "go"}], max_tokens=6, temperature=0
    )
    text = first.choices[0].message.content
    stop = text[len(text) // 2 :][:3]
    r = await client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "go"}], max_tokens=200, temperature=0, stop=stop
    )
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == text[: text.index(stop)]
    assert r.usage.completion_tokens < 200
    assert await _wait_idle(engine)


async def test_non_stream_request_stops_when_the_client_disconnects(tiny_app: FastAPI) -> None:
    from starlette.requests import Request

    from server.api.routes.chat import _ClientGone, _unless_disconnected
    from server.chat import aggregate

    engine = tiny_app.state.registry.get("tiny").engine.engine
    request = ChatCompletionRequest.model_validate(
        {"model": "tiny", "messages": [{"role": "user", "content": "go"}], "max_tokens": 450}
    )
    stream = await tiny_app.state.chat_service.start(request)

    async def receive() -> dict:
        await asyncio.sleep(0.3)  # the client leaves while the completion is being generated
        return {"type": "http.disconnect"}

    http_request = Request({"type": "http", "method": "POST", "headers": []}, receive)
    with pytest.raises(_ClientGone):
        await _unless_disconnected(aggregate.fold(stream), http_request)
    assert await _wait_idle(engine)


class _NativePanic(BaseException):
    """What a panic inside a native extension (pyo3's PanicException) looks like to Python."""


async def test_a_failing_grammar_ends_only_its_own_sequence(tiny_app: FastAPI) -> None:
    from server.engine.types import EngineRequest, SamplingParams

    engine = tiny_app.state.registry.get("tiny").engine
    calls = []

    def broken_mask(generated: list[int]) -> None:
        calls.append(len(generated))
        if len(generated) >= 2:
            raise _NativePanic("grammar engine panicked")

    params = SamplingParams(max_tokens=8, temperature=0.0)
    broken = engine.stream([EngineRequest("broken", [1, 2, 3], params, mask_fn=broken_mask)])
    healthy = engine.stream([EngineRequest("healthy", [1, 2, 3], params)])

    async def outputs(stream) -> list:
        return [out async for _, out in stream]

    broken_out, healthy_out = await asyncio.gather(outputs(broken), outputs(healthy))
    assert broken_out[-1].error and "panicked" in broken_out[-1].error
    assert len([o for o in broken_out if o.token is not None]) == 2
    assert [o.token is not None for o in healthy_out].count(True) == 8 and healthy_out[-1].error is None
    assert await _wait_idle(tiny_app.state.registry.get("tiny").engine.engine)
