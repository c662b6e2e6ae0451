"""The 2025-26 request fields on the real default model, through the official SDK against a live
server: a pinned system prompt hit after traffic that evicts the rest, stream obfuscation, the end
user's id, history with client-library keys."""

from __future__ import annotations

from typing import Any

import openai

from tests.e2e.conftest import MODEL

SYSTEM = "You are the help desk of a bicycle shop. Answer in one short sentence. " * 6


def _cached(client: openai.OpenAI, messages: list[Any], **kwargs: Any) -> int:
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1, **kwargs)
    assert r.usage and r.usage.prompt_tokens_details
    return r.usage.prompt_tokens_details.cached_tokens or 0


def test_a_pinned_system_prompt_survives_other_traffic(sync_client: openai.OpenAI) -> None:
    pinned = {
        "role": "system",
        "content": [
            {"type": "text", "text": SYSTEM, "prompt_cache_breakpoint": {"mode": "explicit", "ttl": "30m"}}
        ],
    }
    _cached(sync_client, [pinned, {"role": "user", "content": "Do you fix brakes?"}])
    plain = [
        {"role": "system", "content": "Shoe store rules: be brief, never promise a delivery date. " * 6},
        {"role": "user", "content": "Hi"},
    ]
    _cached(sync_client, plain)
    for i in range(40):  # more prompts than the server has KV slots
        _cached(sync_client, [{"role": "user", "content": f"Question number {i}: what is {i} plus {i}?"}])
    assert _cached(sync_client, plain) == 0
    assert _cached(sync_client, [pinned, {"role": "user", "content": "Open on Sunday?"}]) > 60


def test_stream_chunks_carry_obfuscation_unless_turned_off(sync_client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "Say hello."}]
    chunks = list(sync_client.chat.completions.create(model=MODEL, messages=ask, max_tokens=8, stream=True))
    assert chunks and all(chunk.obfuscation for chunk in chunks)
    off = sync_client.chat.completions.create(
        model=MODEL, messages=ask, max_tokens=8, stream=True, stream_options={"include_obfuscation": False}
    )
    assert all(chunk.obfuscation is None for chunk in off)


def test_fields_of_the_current_sdk(sync_client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "Hi"}]
    r = sync_client.chat.completions.create(
        model=MODEL,
        messages=ask,
        max_tokens=2,
        safety_identifier="user-hash-1",
        prompt_cache_key="tenant-1",
        prompt_cache_retention="in_memory",
        prompt_cache_options={"mode": "implicit", "ttl": "30m"},
        service_tier="fast",
    )
    assert r.service_tier == "priority"
    for kwargs, param in (
        ({"moderation": {"model": "omni-moderation-latest"}}, "moderation"),
        ({"verbosity": "low"}, "verbosity"),
    ):
        try:
            sync_client.chat.completions.create(model=MODEL, messages=ask, max_tokens=1, **kwargs)
        except openai.BadRequestError as exc:
            assert exc.code == "unsupported_parameter" and exc.param == param
        else:
            raise AssertionError(f"{param} was accepted")


def test_a_litellm_style_tool_loop(sync_client: openai.OpenAI) -> None:
    """The assistant message as LiteLLM sends it back (`provider_specific_fields`), then the result."""
    call = {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "What time is it?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [call],
            "function_call": None,
            "provider_specific_fields": {"refusal": None},
        },
        {"role": "tool", "tool_call_id": "call_1", "name": "get_time", "content": "12:00"},
    ]
    tools = [
        {
            "type": "function",
            "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
        }
    ]
    r = sync_client.chat.completions.create(model=MODEL, messages=messages, tools=tools, max_tokens=16)  # type: ignore[arg-type]
    assert r.choices[0].finish_reason in {"stop", "length", "tool_calls"}
