"""The request fields of the current openai SDK (`completion_create_params`) beyond the 2025
reference: each works with its documented meaning or is a 400 `unsupported_parameter` naming it."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI

from server.api.obfuscation import BLOCK
from server.chat.templating import ChatTemplater
from server.logs import JsonFormatter
from server.protocol.request import ChatCompletionRequest
from tests.api.conftest import assert_error

ASK = [{"role": "user", "content": "Weather in Paris or Rome?"}]


def _tool(name: str) -> dict[str, Any]:
    parameters = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 6}},
        "required": ["city"],
        "additionalProperties": False,
    }
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


TOOLS = [_tool("get_weather"), _tool("get_time")]
CUSTOM = {"type": "custom", "custom": {"name": "run_sql", "format": {"type": "text"}}}


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"moderation": {"model": "omni-moderation-latest"}}, "moderation"),
        ({"verbosity": "low"}, "verbosity"),  # the tiny model's template has no verbosity setting
        ({"reasoning_effort": "xhigh"}, "reasoning_effort"),
        ({"reasoning_effort": "max"}, "reasoning_effort"),
        ({"tools": [CUSTOM]}, "tools[0]"),
        ({"tools": TOOLS, "tool_choice": {"type": "custom", "custom": {"name": "run_sql"}}}, "tool_choice"),
        (
            {
                "tools": TOOLS,
                "tool_choice": {
                    "type": "allowed_tools",
                    "allowed_tools": {"mode": "auto", "tools": [{"type": "custom", "custom": {"name": "x"}}]},
                },
            },
            "tool_choice.allowed_tools.tools[0]",
        ),
        (
            {
                "messages": [
                    *ASK,
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c1", "type": "custom", "custom": {"name": "run_sql", "input": "x"}}
                        ],
                    },
                ]
            },
            "messages[1].tool_calls[0]",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "data:,", "detail": "original"}}
                        ],
                    }
                ]
            },
            "messages[0].content[0]",
        ),
    ],
)
async def test_what_cannot_be_honoured_is_unsupported_parameter(
    http: httpx.AsyncClient, patch: dict[str, Any], param: str
) -> None:
    body = {"model": "tiny", "messages": ASK, "max_tokens": 1, **patch}
    assert_error(await http.post("/v1/chat/completions", json=body), 400, param, "unsupported_parameter")


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"safety_identifier": "x" * 129}, "safety_identifier"),
        ({"prompt_cache_retention": "forever"}, "prompt_cache_retention"),
        ({"prompt_cache_options": {"mode": "sometimes"}}, "prompt_cache_options.mode"),
        ({"verbosity": "loud"}, "verbosity"),
        ({"service_tier": "turbo"}, "service_tier"),
        (
            {
                "tools": TOOLS,
                "tool_choice": {
                    "type": "allowed_tools",
                    "allowed_tools": {"mode": "auto", "tools": [_tool("nope")]},
                },
            },
            "tool_choice.allowed_tools.tools[0]",
        ),
    ],
)
async def test_bad_values_are_400_naming_them(
    http: httpx.AsyncClient, patch: dict[str, Any], param: str
) -> None:
    body = {"model": "tiny", "messages": ASK, "max_tokens": 1, **patch}
    assert_error(await http.post("/v1/chat/completions", json=body), 400, param)


@pytest.mark.parametrize(
    ("asked", "reported"),
    [
        (None, "default"),
        ("auto", "default"),
        ("fast", "priority"),
        ("flex", "flex"),
        ("priority", "priority"),
    ],
)
async def test_service_tier_is_echoed(client: openai.AsyncOpenAI, asked: str | None, reported: str) -> None:
    kwargs = {} if asked is None else {"service_tier": asked}
    r = await client.chat.completions.create(model="tiny", messages=ASK, max_tokens=1, **kwargs)
    assert r.service_tier == reported


def test_verbosity_reaches_a_template_that_reads_it(tiny_app: FastAPI) -> None:
    template = (
        "{% for m in messages %}{{ m.content }}{% endfor %}[verbosity={{ verbosity | default('unset') }}]"
    )
    templater = ChatTemplater(tiny_app.state.registry.get("tiny").tokenizer, template)
    messages = ChatCompletionRequest.model_validate({"model": "tiny", "messages": ASK}).messages
    assert templater.reads_verbosity
    assert templater.render(messages, variables={"verbosity": "low"}).text.endswith("[verbosity=low]")
    assert templater.render(messages).text.endswith("[verbosity=unset]")


async def test_allowed_tools_limits_what_may_be_called(client: openai.AsyncOpenAI) -> None:
    """Both tools are shown; only the allowed one can be called (the grammar holds a random model to it)."""
    choice = {
        "type": "allowed_tools",
        "allowed_tools": {
            "mode": "required",
            "tools": [{"type": "function", "function": {"name": "get_time"}}],
        },
    }
    for seed in range(4):
        r = await client.chat.completions.create(
            model="tiny",
            messages=ASK,
            tools=TOOLS,
            tool_choice=choice,
            max_tokens=60,
            seed=seed,
            temperature=1.0,  # type: ignore[arg-type]
        )
        calls = r.choices[0].message.tool_calls
        assert calls and {call.function.name for call in calls} == {"get_time"}


async def test_safety_identifier_is_in_the_access_log(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"model": "tiny", "messages": ASK, "max_tokens": 1, "safety_identifier": "user-7f3a"}
    with caplog.at_level(logging.INFO, logger="server.access"):
        assert (await http.post("/v1/chat/completions", json=body)).status_code == 200
        assert (
            await http.post(
                "/v1/chat/completions", json={**body, "safety_identifier": None, "user": "legacy-9"}
            )
        ).status_code == 200
    access = [r for r in caplog.records if r.name == "server.access"]
    assert "user='user-7f3a'" in access[0].getMessage()
    assert json.loads(JsonFormatter().format(access[1]))["end_user"] == "legacy-9"


async def _stream_events(http: httpx.AsyncClient, **extra: Any) -> list[bytes]:
    body = {"model": "tiny", "messages": ASK, "max_tokens": 12, "stream": True, **extra}
    async with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        raw = b"".join([part async for part in r.aiter_bytes()])
    return [e + b"\n\n" for e in raw.split(b"\n\n") if e and e != b"data: [DONE]"]


async def test_stream_chunks_are_obfuscated_by_default(
    http: httpx.AsyncClient, client: openai.AsyncOpenAI
) -> None:
    events = await _stream_events(http, stream_options={"include_usage": True})
    chunks = [json.loads(e[len(b"data: ") :]) for e in events]
    assert all(isinstance(c.get("obfuscation"), str) and c["obfuscation"].isalnum() for c in chunks)
    # Each event is padded past the next multiple of BLOCK bytes by a random 0..BLOCK-1: its size
    # says nothing of its text's length below BLOCK, and every remainder is as likely.
    for event, chunk in zip(events, chunks, strict=True):
        field = len(',"obfuscation":""') + len(chunk["obfuscation"])
        bare = len(event) - field + len(',"obfuscation":""')  # framed with an empty padding
        assert -(-bare // BLOCK) * BLOCK <= len(event) < -(-bare // BLOCK) * BLOCK + BLOCK
    assert len({len(event) % BLOCK for event in events}) > 1
    stream = await client.chat.completions.create(model="tiny", messages=ASK, max_tokens=4, stream=True)
    parsed = [chunk async for chunk in stream]
    assert all(chunk.obfuscation for chunk in parsed)


async def test_include_obfuscation_false_leaves_it_out(http: httpx.AsyncClient) -> None:
    events = await _stream_events(http, stream_options={"include_obfuscation": False})
    assert events and all(b"obfuscation" not in e for e in events)
