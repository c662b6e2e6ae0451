"""Response shapes, stream framing and parity, on the tiny model in-process."""

import json

import httpx
import openai

from server.models.token_table import _byte_level_decoder

MSG = [{"role": "user", "content": "Tell me a story."}]


async def test_non_stream_shape(http: httpx.AsyncClient) -> None:
    r = await http.post("/v1/chat/completions", json={"model": "tiny", "messages": MSG, "max_tokens": 4})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["system_fingerprint"].startswith("fp_") and body["service_tier"] == "default"
    choice = body["choices"][0]
    assert choice["index"] == 0 and choice["finish_reason"] == "length" and choice["logprobs"] is None
    assert choice["message"]["role"] == "assistant" and choice["message"]["refusal"] is None
    assert choice["message"]["annotations"] == []
    usage = body["usage"]
    assert usage["completion_tokens"] == 4
    assert usage["total_tokens"] == usage["prompt_tokens"] + 4
    details = usage["prompt_tokens_details"]  # earlier tests may have left this prompt's prefix cached
    assert details["audio_tokens"] == 0 and 0 <= details["cached_tokens"] < usage["prompt_tokens"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0


def _events(text: str) -> list[str]:
    assert text.endswith("data: [DONE]\n\n")
    return [block.removeprefix("data: ") for block in text.strip().split("\n\n")]


async def test_stream_framing_with_usage(http: httpx.AsyncClient) -> None:
    body = {
        "model": "tiny",
        "messages": MSG,
        "max_tokens": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    r = await http.post("/v1/chat/completions", json=body)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = _events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:-1])
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and finish[0]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    assert all(c["usage"] is None for c in chunks[:-1])


async def test_stream_without_usage_has_no_usage_field(http: httpx.AsyncClient) -> None:
    r = await http.post(
        "/v1/chat/completions", json={"model": "tiny", "messages": MSG, "max_tokens": 3, "stream": True}
    )
    chunks = [json.loads(e) for e in _events(r.text)[:-1]]
    assert all("usage" not in c for c in chunks)
    assert all(c["choices"] for c in chunks)


async def test_stream_and_non_stream_agree(client: openai.AsyncOpenAI) -> None:
    args = dict(model="tiny", messages=MSG, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3)
    whole = await client.chat.completions.create(**args)
    stream = await client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True})
    text, entries, usage, finish = "", [], None, None
    async for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            entries += c.logprobs.content if c.logprobs and c.logprobs.content else []
            finish = c.finish_reason or finish
    choice = whole.choices[0]
    assert text == choice.message.content
    assert [e.model_dump() for e in entries] == [e.model_dump() for e in choice.logprobs.content]
    assert usage == whole.usage and finish == choice.finish_reason


async def test_n_choices_are_indexed_and_seeded(client: openai.AsyncOpenAI) -> None:
    args = dict(model="tiny", messages=MSG, max_tokens=8, n=3, seed=42, temperature=1.0)
    first = await client.chat.completions.create(**args)
    again = await client.chat.completions.create(**args)
    assert [c.index for c in first.choices] == [0, 1, 2]
    texts = [c.message.content for c in first.choices]
    assert texts == [c.message.content for c in again.choices]
    assert len(set(texts)) > 1  # independent choices
    assert first.usage.completion_tokens == 24


async def test_n_choices_stream(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(model="tiny", messages=MSG, max_tokens=4, n=2, stream=True)
    finishes = {}
    async for chunk in stream:
        for c in chunk.choices:
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
    assert finishes == {0: "length", 1: "length"}


async def test_service_tier_is_echoed(client: openai.AsyncOpenAI) -> None:
    r = await client.chat.completions.create(model="tiny", messages=MSG, max_tokens=1, service_tier="flex")
    assert r.service_tier == "flex"


async def test_logit_bias_forces_a_token(client: openai.AsyncOpenAI, tokenizer) -> None:
    token_id = tokenizer.encode(" banana", add_special_tokens=False)[0]
    r = await client.chat.completions.create(
        model="tiny", messages=MSG, max_tokens=4, logit_bias={str(token_id): 100}, logprobs=True
    )
    assert [e.token for e in r.choices[0].logprobs.content] == [tokenizer.decode([token_id])] * 4


async def test_logit_bias_bans_a_token(client: openai.AsyncOpenAI, tokenizer) -> None:
    args = dict(model="tiny", messages=MSG, max_tokens=1, temperature=0, logprobs=True)
    first = (await client.chat.completions.create(**args)).choices[0].logprobs.content[0]
    encoder = {b: ch for ch, b in _byte_level_decoder().items()}
    token_id = tokenizer.convert_tokens_to_ids("".join(encoder[b] for b in first.bytes))
    banned = await client.chat.completions.create(**args, logit_bias={str(token_id): -100})
    assert banned.choices[0].logprobs.content[0].token != first.token
