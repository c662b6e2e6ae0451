"""Overload and time limits: a request that waits too long for a place gets 429; one that runs past
the request timeout ends with finish_reason "length" and frees its sequence."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import openai
import pytest
from fastapi import FastAPI

from tests.api.conftest import running_app, until
from tests.conftest import tiny_config_yaml

MESSAGES = [{"role": "user", "content": "Tell me a long story."}]


@asynccontextmanager
async def serving(config: Path) -> AsyncIterator[tuple[FastAPI, openai.AsyncOpenAI]]:
    async with running_app(config) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as http:
            yield (
                app,
                openai.AsyncOpenAI(base_url="http://t/v1", api_key="x", http_client=http, max_retries=0),
            )


async def test_a_request_that_waits_too_long_for_a_place_gets_429(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    config = tiny_config_yaml(
        tiny_model_dir, tmp_path, "    engine: {max_running: 1, max_queue_wait_s: 0.2}\n"
    )
    async with serving(config) as (app, client):
        engine = app.state.registry.get("tiny").engine.engine
        busy = asyncio.ensure_future(
            client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=470, temperature=0)
        )
        assert await until(lambda: engine.num_running == 1)

        async def refused(stream: bool) -> openai.RateLimitError:
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(
                    model="tiny", messages=MESSAGES, max_tokens=5, stream=stream
                )
            return caught.value

        errors = await asyncio.gather(refused(stream=True), refused(stream=False))
        for error in errors:  # the stream's status line waited for its place, so it can say 429 too
            assert error.status_code == 429 and error.response.headers["retry-after"] == "1"
            assert error.body["type"] == "rate_limit_error" and "waited too long" in error.body["message"]
        assert not busy.done()  # the running request was not disturbed
        result = await busy
        assert result.choices[0].finish_reason == "length" and result.usage.completion_tokens == 470
        assert await until(lambda: engine.num_running == 0 and engine.num_waiting == 0)
        ok = await client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=3)
        assert ok.usage.completion_tokens == 3


@pytest.mark.parametrize("stream", [False, True])
async def test_a_request_past_its_timeout_ends_with_length(
    tiny_model_dir: Path, tmp_path: Path, stream: bool
) -> None:
    config = tiny_config_yaml(tiny_model_dir, tmp_path)
    config.write_text(config.read_text() + "  request_timeout_s: 0.15\n")
    async with serving(config) as (app, client):
        engine = app.state.registry.get("tiny").engine.engine
        args = dict(model="tiny", messages=MESSAGES, max_tokens=470, temperature=0, n=4)
        if stream:
            options = {"include_usage": True}
            chunks = [
                c
                async for c in await client.chat.completions.create(
                    **args, stream=True, stream_options=options
                )
            ]
            usage = chunks[-1].usage
            chunks = chunks[:-1]
            finishes = [
                c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
            ]
            texts = {
                i: "".join(c.choices[0].delta.content or "" for c in chunks if c.choices[0].index == i)
                for i in range(4)
            }
        else:
            result = await client.chat.completions.create(**args)
            finishes = [choice.finish_reason for choice in result.choices]
            texts = {choice.index: choice.message.content for choice in result.choices}
            usage = result.usage
        assert usage.completion_tokens < 4 * 470  # cut short by the deadline, not by max_tokens
        assert finishes == ["length"] * 4
        assert all(texts.values())  # what was generated before the deadline is kept
        assert await until(lambda: engine.num_running == 0 and engine.num_waiting == 0)
        assert all(slot.seq is None for slot in engine.scheduler.table.slots)
