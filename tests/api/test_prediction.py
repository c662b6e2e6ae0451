"""`prediction` over the API on the tiny model: the same answer as without it (text, logprobs,
stop strings, n=2, streaming), usage counting accepted and rejected prediction tokens."""

from __future__ import annotations

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

MESSAGES = [{"role": "user", "content": "Say something long."}]


async def _create(client: openai.AsyncOpenAI, **extra: object) -> openai.types.chat.ChatCompletion:
    return await client.chat.completions.create(
        model="tiny", messages=MESSAGES, temperature=0, max_tokens=30, **extra
    )


async def test_a_correct_prediction_changes_nothing_and_is_counted(client: openai.AsyncOpenAI) -> None:
    plain = await _create(client, logprobs=True, top_logprobs=2)
    text = plain.choices[0].message.content
    predicted = await _create(
        client, logprobs=True, top_logprobs=2, prediction={"type": "content", "content": text}
    )
    assert predicted.choices[0].message.content == text
    assert [e.token for e in predicted.choices[0].logprobs.content] == [
        e.token for e in plain.choices[0].logprobs.content
    ]
    for a, b in zip(predicted.choices[0].logprobs.content, plain.choices[0].logprobs.content, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
    details = predicted.usage.completion_tokens_details
    assert details.accepted_prediction_tokens > 0
    assert (
        predicted.usage.completion_tokens
        == plain.usage.completion_tokens + details.rejected_prediction_tokens
    )
    assert predicted.usage.total_tokens == predicted.usage.prompt_tokens + predicted.usage.completion_tokens


async def test_a_wrong_prediction_changes_nothing(client: openai.AsyncOpenAI) -> None:
    plain = await _create(client)
    predicted = await _create(client, prediction={"type": "content", "content": "zebra " * 40})
    assert predicted.choices[0].message.content == plain.choices[0].message.content
    assert predicted.usage.completion_tokens_details.accepted_prediction_tokens == 0


async def test_stop_strings_n2_and_streaming_with_a_prediction(client: openai.AsyncOpenAI) -> None:
    plain = await _create(client)
    text = plain.choices[0].message.content
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    stopped = await _create(client, stop=[stop])
    with_prediction = await _create(client, stop=[stop], n=2, prediction={"type": "content", "content": text})
    assert [c.message.content for c in with_prediction.choices] == [stopped.choices[0].message.content] * 2
    assert {c.finish_reason for c in with_prediction.choices} == {stopped.choices[0].finish_reason}
    stream = await client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        temperature=0,
        max_tokens=30,
        stream=True,
        stream_options={"include_usage": True},
        prediction={"type": "content", "content": [{"type": "text", "text": text}]},
    )
    streamed, usage = "", None
    async for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            streamed += choice.delta.content or ""
    assert streamed == text
    assert usage.completion_tokens_details.accepted_prediction_tokens > 0


async def test_a_prediction_of_the_wrong_type_is_a_400_naming_it(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await _create(client, prediction={"type": "draft", "content": "x"})
    assert "prediction" in str(caught.value)


async def test_metrics_count_proposed_and_accepted_tokens(
    client: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    def counters(text: str) -> tuple[float, float]:
        values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
        return (
            values.get("openweights_speculative_proposed_tokens_total", 0.0),
            values.get("openweights_speculative_accepted_tokens_total", 0.0),
        )

    before = counters((await http.get("/metrics")).text)
    text = (await _create(client)).choices[0].message.content
    await _create(client, prediction={"type": "content", "content": text})
    proposed, kept = counters((await http.get("/metrics")).text)
    assert proposed > before[0] and kept > before[1]
    assert kept - before[1] <= proposed - before[0]


async def test_a_prediction_under_a_json_schema_gives_the_same_answer(client: openai.AsyncOpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["name", "tags"],
        "additionalProperties": False,
    }
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "thing", "schema": schema, "strict": True},
    }
    plain = await _create(client, response_format=response_format)
    text = plain.choices[0].message.content
    # Right for its first half, then text the grammar forbids: those proposals are rejected.
    prediction = text[: len(text) // 2] + "}}}} not json"
    predicted = await _create(
        client, response_format=response_format, prediction={"type": "content", "content": prediction}
    )
    assert predicted.choices[0].message.content == text
    assert predicted.usage.completion_tokens_details.accepted_prediction_tokens > 0
