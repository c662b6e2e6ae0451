"""A choice whose reader stops taking its output is parked (out of the batch, its slot free) and,
once the reader catches up, resumes exactly where it was."""

from __future__ import annotations

import asyncio

import pytest
from fastapi import FastAPI

from server.engine.engine import MAX_UNREAD
from server.engine.types import EngineRequest, SamplingParams
from tests.api.conftest import until

PROMPT = list(range(100, 140))


async def _tokens(stream) -> list[int]:
    return [out.token.token_id async for _, out in stream if out.token is not None]


@pytest.mark.parametrize(("temperature", "seed"), [(0.0, None), (1.0, 11)])
async def test_an_unread_choice_is_parked_then_resumes_to_the_same_tokens(
    tiny_app: FastAPI, temperature: float, seed: int | None
) -> None:
    params = SamplingParams(max_tokens=300, temperature=temperature, seed=seed)
    engine = tiny_app.state.registry.get("tiny").engine
    alone = await _tokens(engine.stream([EngineRequest("read-at-once", PROMPT, params)]))
    assert len(alone) == 300
    unread = engine.stream([EngineRequest("not-read", PROMPT, params)])
    assert await until(lambda: engine.engine.stats.parked == 1, 10)
    await asyncio.sleep(0.2)  # parked: it produces nothing more, and holds no slot
    assert engine.engine.stats.parked == 1 and engine.engine.num_running == 0
    assert unread._queue.qsize() <= MAX_UNREAD + 2
    assert await _tokens(unread) == alone  # resumed (from its cached KV) to the very same output
    assert engine.engine.stats.parked == 0


async def test_a_parked_choice_frees_its_slot_for_others(tiny_app: FastAPI) -> None:
    engine = tiny_app.state.registry.get("tiny").engine
    params = SamplingParams(max_tokens=300, temperature=0.0)
    unread = [engine.stream([EngineRequest(f"lazy-{i}", [*PROMPT, i], params)]) for i in range(16)]
    assert await until(lambda: engine.engine.stats.parked == 16, 10)
    probe = await _tokens(engine.stream([EngineRequest("probe", PROMPT, SamplingParams(max_tokens=4))]))
    assert len(probe) == 4
    for stream in unread:
        stream.close()
    assert await until(lambda: engine.engine.stats.parked == 0 and engine.engine.num_running == 0, 10)
