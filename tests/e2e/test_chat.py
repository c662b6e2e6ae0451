"""The real default model end to end through the official SDK, sync and async, stream and not."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from tests.e2e.conftest import MODEL, served_in_float32

pytestmark = pytest.mark.e2e
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def _collect(stream) -> tuple[str, list, object, str | None, list[str]]:
    text, entries, usage, finish, deltas = "", [], None, None, []
    for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            deltas.append(c.delta.content or "")
            text += c.delta.content or ""
            entries += c.logprobs.content if c.logprobs and c.logprobs.content else []
            finish = c.finish_reason or finish
    return text, entries, usage, finish, deltas


def test_greedy_capital_of_france_is_paris(sync_client: openai.OpenAI) -> None:
    r = sync_client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=32)
    assert "Paris" in r.choices[0].message.content
    assert r.model == MODEL and r.choices[0].finish_reason in ("stop", "length")


def test_stream_matches_non_stream(sync_client: openai.OpenAI) -> None:
    args = dict(model=MODEL, messages=FRANCE, temperature=0, max_tokens=48, logprobs=True, top_logprobs=3)
    whole = sync_client.chat.completions.create(**args)
    text, entries, usage, finish, _ = _collect(
        sync_client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True})
    )
    choice = whole.choices[0]
    assert text == choice.message.content
    assert [e.token for e in entries] == [e.token for e in choice.logprobs.content]
    assert [e.logprob for e in entries] == pytest.approx(
        [e.logprob for e in choice.logprobs.content], abs=1e-4
    )
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens == whole.usage.prompt_tokens
    assert finish == choice.finish_reason


def test_logprobs_are_consistent(sync_client: openai.OpenAI) -> None:
    r = sync_client.chat.completions.create(
        model=MODEL, messages=FRANCE, temperature=0, max_tokens=16, logprobs=True, top_logprobs=5
    )
    content = r.choices[0].logprobs.content
    assert b"".join(bytes(e.bytes) for e in content).decode() == r.choices[0].message.content
    for e in content:
        tops = [t.logprob for t in e.top_logprobs]
        assert len(tops) == 5 and tops == sorted(tops, reverse=True)
        assert e.top_logprobs[0].token == e.token  # greedy: the chosen token is the most likely
        assert e.logprob <= 0


def test_multibyte_text_streams_cleanly(sync_client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Write the Japanese word for thank you, then three emoji."}]
    args = dict(model=MODEL, messages=messages, temperature=0, max_tokens=40)
    whole = sync_client.chat.completions.create(**args).choices[0].message.content
    text, _, _, _, deltas = _collect(sync_client.chat.completions.create(**args, stream=True))
    assert text == whole
    assert all("\ufffd" not in d for d in deltas)


def test_seed_gives_the_same_sample(sync_client: openai.OpenAI) -> None:
    args = dict(model=MODEL, messages=FRANCE, temperature=1.0, max_tokens=24, seed=7, n=2)
    first = sync_client.chat.completions.create(**args)
    second = sync_client.chat.completions.create(**args)
    assert [c.message.content for c in first.choices] == [c.message.content for c in second.choices]
    assert first.system_fingerprint == second.system_fingerprint


def test_stop_string_in_stream_and_not(sync_client: openai.OpenAI) -> None:
    args = dict(model=MODEL, messages=FRANCE, temperature=0, max_tokens=40, stop=[" Paris", "zzz"])
    whole = sync_client.chat.completions.create(**args)
    assert "Paris" not in whole.choices[0].message.content
    assert whole.choices[0].finish_reason == "stop"
    text, _, _, finish, deltas = _collect(sync_client.chat.completions.create(**args, stream=True))
    assert text == whole.choices[0].message.content and finish == "stop"
    assert not any("Paris" in d for d in deltas)


def test_max_tokens_gives_length(sync_client: openai.OpenAI) -> None:
    r = sync_client.chat.completions.create(model=MODEL, messages=FRANCE, max_completion_tokens=3)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3


def test_penalties_change_a_repetitive_answer(sync_client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Write the word 'hello' twenty times."}]
    args = dict(model=MODEL, messages=messages, temperature=0, max_tokens=40)
    plain = sync_client.chat.completions.create(**args).choices[0].message.content
    penalized = sync_client.chat.completions.create(**args, frequency_penalty=2.0).choices[0].message.content
    presence = sync_client.chat.completions.create(**args, presence_penalty=2.0).choices[0].message.content
    assert plain.lower().count("hello") > penalized.lower().count("hello")
    assert presence != plain


def test_assistant_prefill_is_continued(sync_client: openai.OpenAI) -> None:
    messages = [*FRANCE, {"role": "assistant", "content": "The capital of France is"}]
    r = sync_client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=5)
    assert r.choices[0].message.content.startswith(" Paris")


def test_every_role_is_accepted(sync_client: openai.OpenAI) -> None:
    messages = [
        {"role": "developer", "content": "Answer briefly.", "name": "ops"},
        {"role": "system", "content": [{"type": "text", "text": "Be kind."}]},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}], "name": "alice"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"},
        {"role": "function", "name": "weather", "content": "Sunny"},
        {"role": "assistant", "refusal": "I cannot say more."},
        {"role": "user", "content": "Summarize the weather."},
    ]
    r = sync_client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=20)
    assert r.choices[0].message.content


def test_errors_through_the_sdk(sync_client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        sync_client.chat.completions.create(model="nope", messages=FRANCE)
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_long:
        sync_client.chat.completions.create(model=MODEL, messages=FRANCE, max_completion_tokens=9000)
    assert too_long.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as unsupported:
        sync_client.chat.completions.create(model=MODEL, messages=FRANCE, reasoning_effort="low")
    assert unsupported.value.body["param"] == "reasoning_effort"


def test_models_and_health(sync_client: openai.OpenAI, server_url: str) -> None:
    assert [m.id for m in sync_client.models.list().data] == [MODEL]
    assert sync_client.models.retrieve(MODEL).id == MODEL
    assert httpx.get(f"{server_url}/health").status_code == 200


async def test_async_stream_and_concurrency(async_client: openai.AsyncOpenAI) -> None:
    prompts = ["Name a color.", "Name a fruit.", "Name a planet.", "Name a country."]

    async def ask(prompt: str) -> str:
        stream = await async_client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompt}],
            temperature=0,
            max_tokens=12,
            stream=True,
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    together = await asyncio.gather(*(ask(p) for p in prompts))
    alone = [await ask(p) for p in prompts]
    assert all(together) and all(alone)
    if served_in_float32():  # bfloat16 batches may round differently (see test_batching.py)
        assert together == alone
    r = await async_client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=8)
    assert r.choices[0].message.content


def test_disconnect_mid_stream_keeps_the_server_serving(server_url: str, sync_client: openai.OpenAI) -> None:
    body = {"model": MODEL, "messages": FRANCE, "max_tokens": 2000, "stream": True, "temperature": 1}
    with httpx.stream("POST", f"{server_url}/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
    # The abandoned generation is cancelled; the server answers the next request promptly.
    r = sync_client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=8)
    assert "Paris" in r.choices[0].message.content
