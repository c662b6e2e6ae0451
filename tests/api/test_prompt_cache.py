"""Prompt caching through the official SDK: breakpoints pin a prefix through traffic that evicts
everything else, explicit mode, cache keys, and the pinned tokens in /metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI

from server.engine.types import PREFILL_BLOCK
from server.protocol.request import ChatCompletionRequest
from tests.api.conftest import assert_error, running_app
from tests.conftest import tiny_config_yaml

SYSTEM_TEXT = "You are the support assistant of Example Corp. " * 8  # ~100 tokens


@pytest.fixture(scope="module")
async def small_cache(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[FastAPI, openai.AsyncOpenAI, httpx.AsyncClient]]:
    """Four KV slots, so a little traffic evicts every unpinned entry."""
    extra = "    engine:\n      max_running: 4\n      max_pinned_slots: 2\n"
    async with running_app(tiny_config_yaml(tiny_model_dir, tmp_path_factory.mktemp("cfg"), extra)) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as http:
            yield app, openai.AsyncOpenAI(base_url="http://t/v1", api_key="x", http_client=http), http


def pinned_system(text: str = SYSTEM_TEXT, ttl: str = "30m") -> dict[str, Any]:
    part = {"type": "text", "text": text, "prompt_cache_breakpoint": {"mode": "explicit", "ttl": ttl}}
    return {"role": "system", "content": [part]}


async def ask(client: openai.AsyncOpenAI, messages: list[Any], **kwargs: Any) -> int:
    r = await client.chat.completions.create(model="tiny", messages=messages, max_tokens=1, **kwargs)
    assert r.usage and r.usage.prompt_tokens_details
    return r.usage.prompt_tokens_details.cached_tokens or 0


async def churn(client: openai.AsyncOpenAI, tag: str, count: int = 8) -> None:
    """Other traffic: as many different prompts as it takes to evict every unpinned entry."""
    for i in range(count):
        await ask(client, [{"role": "user", "content": f"{tag} {i}: " + "unrelated words " * 20}])


def breakpoints(app: FastAPI, messages: list[Any]) -> list[int]:
    request = ChatCompletionRequest.model_validate({"model": "tiny", "messages": messages})
    return [
        tokens for tokens, _ in app.state.registry.get("tiny").templater.render(request.messages).breakpoints
    ]


async def test_a_pinned_system_prompt_is_a_cache_hit_after_other_traffic(small_cache: tuple) -> None:
    app, client, _ = small_cache
    first = [pinned_system(), {"role": "user", "content": "Where is my order?"}]
    await ask(client, first)
    # An unpinned prompt of the same length, for comparison.
    plain = {"role": "system", "content": "You are the billing assistant of Example Corp. " * 8}
    await ask(client, [plain, {"role": "user", "content": "Where is my order?"}])
    await churn(client, "evict")
    assert await ask(client, [plain, {"role": "user", "content": "Refund?"}]) == 0
    cached = await ask(client, [pinned_system(), {"role": "user", "content": "Can I return shoes?"}])
    (pinned,) = breakpoints(app, first)
    # The pinned system prompt up to its last block bound, where a reused prefix is cut (the rows
    # after it are read as a fresh prompt reads them, so the answer is the same as without the cache).
    assert pinned > 70 and cached >= pinned // PREFILL_BLOCK * PREFILL_BLOCK > 0


async def test_the_breakpoint_lands_at_the_end_of_its_part(small_cache: tuple) -> None:
    app, _, _ = small_cache
    served = app.state.registry.get("tiny")
    body = {
        "model": "tiny",
        "messages": [
            pinned_system(),
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "First part."},
                    {"type": "text", "text": "Second part.", "prompt_cache_breakpoint": {"mode": "explicit"}},
                ],
            },
        ],
    }
    prompt = served.templater.render(ChatCompletionRequest.model_validate(body).messages)
    (system_end, ttl), (user_end, _) = prompt.breakpoints
    assert ttl == "30m"
    text_of = served.tokenizer.decode
    assert text_of(prompt.token_ids[:system_end]).endswith(SYSTEM_TEXT)
    assert text_of(prompt.token_ids[:user_end]).endswith("First part.\nSecond part.")
    assert len(prompt.token_ids) > user_end > system_end


async def test_explicit_mode_without_breakpoints_disables_caching(small_cache: tuple) -> None:
    _, client, _ = small_cache
    messages = [{"role": "system", "content": "Explicit mode. " * 20}, {"role": "user", "content": "Hi"}]
    await ask(client, messages)
    assert await ask(client, messages, prompt_cache_options={"mode": "explicit"}) == 0
    assert await ask(client, messages) > 0  # the implicit cache still had it


async def test_explicit_mode_hits_only_at_a_breakpoint(small_cache: tuple) -> None:
    _, client, _ = small_cache
    system = pinned_system("Explicit breakpoint mode. " * 12)
    first = [system, {"role": "user", "content": "Same question, asked at length. " * 8}]
    await ask(client, first)
    cached = await ask(client, first, prompt_cache_options={"mode": "explicit"})
    implicit = await ask(client, first)
    assert 0 < cached < implicit  # up to the breakpoint only, not the whole shared prompt


async def test_prompt_cache_key_keeps_a_quiet_keys_entry_through_another_keys_burst(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Its own server: four slots, none pinned (every other test here leaves pins behind)."""
    extra = "    engine:\n      max_running: 4\n"
    async with (
        running_app(tiny_config_yaml(tiny_model_dir, tmp_path, extra)) as app,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=60) as http,
    ):
        client = openai.AsyncOpenAI(base_url="http://t/v1", api_key="x", http_client=http)
        await _quiet_key_survives(client)


async def _quiet_key_survives(client: openai.AsyncOpenAI) -> None:
    quiet = [
        {"role": "system", "content": "Team A's long instructions. " * 12},
        {"role": "user", "content": "a"},
    ]
    await ask(client, quiet, prompt_cache_key="team-a")
    for i in range(8):
        messages = [{"role": "user", "content": f"team b request {i}: " + "words " * 30}]
        await ask(client, messages, prompt_cache_key="team-b")
    assert await ask(client, [quiet[0], {"role": "user", "content": "b"}], prompt_cache_key="team-a") > 0


async def test_implicit_options_and_retention_are_accepted(small_cache: tuple) -> None:
    _, client, _ = small_cache
    messages = [{"role": "system", "content": "Options. " * 30}, {"role": "user", "content": "x"}]
    await ask(client, messages, prompt_cache_options={"mode": "implicit", "ttl": "30m"})
    await churn(client, "options")
    # The implicit breakpoint (the whole prompt) was pinned for 30 minutes.
    assert await ask(client, messages, prompt_cache_retention="24h") > 0
    assert await ask(client, messages, prompt_cache_retention="in_memory") > 0


async def test_pinned_tokens_are_in_the_metrics(small_cache: tuple) -> None:
    _, client, http = small_cache
    await ask(client, [pinned_system("Metrics prompt. " * 10), {"role": "user", "content": "m"}])
    text = (await http.get("/metrics")).text
    line = next(
        li
        for li in text.splitlines()
        if li.startswith('openweights_prompt_cache_pinned_tokens{model="tiny"}')
    )
    assert float(line.split()[-1]) > 0
    assert 'openweights_prompt_cache_pins_evicted_total{model="tiny"}' in text


async def test_at_most_four_breakpoints(small_cache: tuple) -> None:
    _, _, http = small_cache
    parts = [
        {"type": "text", "text": f"p{i}", "prompt_cache_breakpoint": {"mode": "explicit"}} for i in range(5)
    ]
    body = {"model": "tiny", "messages": [{"role": "user", "content": parts}]}
    r = await http.post("/v1/chat/completions", json=body)
    assert_error(r, 400, "messages[0].content[4].prompt_cache_breakpoint")
    bad = {
        "model": "tiny",
        "messages": [
            {
                "role": "user",
                "content": [{**parts[0], "prompt_cache_breakpoint": {"mode": "explicit", "ttl": "1w"}}],
            }
        ],
    }
    assert_error(
        await http.post("/v1/chat/completions", json=bad),
        400,
        "messages[0].content[0].prompt_cache_breakpoint.ttl",
    )
