"""Structured outputs and tool calls on the tiny random-weight model: whatever the weights, the
grammar makes every output valid; what the grammar engine cannot enforce is a 400 naming it."""

from __future__ import annotations

import json
import math

import httpx
import jsonschema
import openai
import pytest

MSG = [{"role": "user", "content": "Reply in JSON please."}]
SMALL = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "size": {"type": "integer", "minimum": 1, "maximum": 9},
        "kind": {"enum": ["a", "b"]},
    },
    "required": ["name", "size", "kind"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 8}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
    },
]


def _format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}}


async def test_json_schema_output_validates_for_every_seed(client: openai.AsyncOpenAI) -> None:
    for seed in range(6):
        r = await client.chat.completions.create(
            model="tiny",
            messages=MSG,
            response_format=_format(SMALL),
            seed=seed,
            temperature=1.0,
            max_tokens=60,
        )
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), SMALL)


async def test_constraints_with_n_logprobs_and_streams(client: openai.AsyncOpenAI) -> None:
    kwargs = dict(model="tiny", messages=MSG, response_format=_format(SMALL), seed=3, max_tokens=60)
    r = await client.chat.completions.create(**kwargs, n=3, logprobs=True, top_logprobs=5)
    for choice in r.choices:
        jsonschema.validate(json.loads(choice.message.content), SMALL)
        for entry in choice.logprobs.content:  # masked alternatives are finite (-9999), never -inf
            assert all(math.isfinite(t.logprob) for t in entry.top_logprobs)
    streamed = await client.chat.completions.create(**kwargs, n=3, stream=True)
    texts: dict[int, str] = {}
    async for chunk in streamed:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
    assert [texts[i] for i in range(3)] == [c.message.content for c in r.choices]


async def test_json_object_gives_an_object_and_needs_the_word_json(
    client: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    r = await client.chat.completions.create(
        model="tiny", messages=MSG, response_format={"type": "json_object"}, seed=1, max_tokens=400
    )
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:  # cut by max_tokens: what was generated, as OpenAI does
        assert r.choices[0].message.content.startswith("{")
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_object"},
    }
    error = (await http.post("/v1/chat/completions", json=body)).json()["error"]
    assert error["param"] == "messages" and "json" in error["message"]


async def test_a_truncated_constrained_output_finishes_with_length(client: openai.AsyncOpenAI) -> None:
    r = await client.chat.completions.create(
        model="tiny", messages=MSG, response_format=_format(SMALL), seed=0, max_tokens=3
    )
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].message.content.startswith("{")


@pytest.mark.parametrize(
    ("schema", "keyword"),
    [
        ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
        ({"type": "object", "properties": {"a": {"type": "string", "pattern": "(?=x)"}}}, "look-around"),
        ({"type": "object", "properties": {"a": {"type": "strnig"}}}, "strnig"),
    ],
)
async def test_unenforceable_schemas_are_a_400_naming_the_keyword(
    http: httpx.AsyncClient, schema: dict, keyword: str
) -> None:
    body = {"model": "tiny", "messages": MSG, "response_format": _format(schema)}
    r = await http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert (
        error["param"] == "response_format" and keyword in error["message"] and "'thing'" in error["message"]
    )


@pytest.mark.parametrize("stream", [False, True])
async def test_named_tool_choice_calls_exactly_that_function(
    client: openai.AsyncOpenAI, stream: bool
) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    for seed in range(3):
        kwargs = dict(model="tiny", messages=MSG, tools=TOOLS, tool_choice=choice, seed=seed, max_tokens=60)
        if stream:
            chunks = [c async for c in await client.chat.completions.create(**kwargs, stream=True)]
            parts = [tc for c in chunks for ch in c.choices for tc in ch.delta.tool_calls or []]
            assert parts[0].function.name == "get_weather" and parts[0].type == "function"
            assert {p.index for p in parts} == {0}
            arguments = "".join(p.function.arguments or "" for p in parts)
        else:
            r = await client.chat.completions.create(**kwargs)
            message = r.choices[0].message
            assert r.choices[0].finish_reason == "tool_calls" and message.content is None
            (call,) = message.tool_calls
            assert call.function.name == "get_weather" and call.id.startswith("call_")
            arguments = call.function.arguments
        jsonschema.validate(json.loads(arguments), WEATHER)


async def test_stream_and_non_stream_tool_calls_agree(client: openai.AsyncOpenAI) -> None:
    # One call, which fits in the limit (a call cut by it is text in a whole answer, not in a stream).
    kwargs = dict(
        model="tiny",
        messages=MSG,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        seed=11,
        max_tokens=80,
    )
    whole = await client.chat.completions.create(**kwargs)
    chunks = [c async for c in await client.chat.completions.create(**kwargs, stream=True)]
    by_index: dict[int, dict] = {}
    for chunk in chunks:
        for ch in chunk.choices:
            for part in ch.delta.tool_calls or []:
                call = by_index.setdefault(part.index, {"name": "", "arguments": ""})
                call["name"] += part.function.name or ""
                call["arguments"] += part.function.arguments or ""
    got = [(c.function.name, c.function.arguments) for c in whole.choices[0].message.tool_calls]
    assert got == [(c["name"], c["arguments"]) for _, c in sorted(by_index.items())]


async def test_deprecated_functions_answer_with_function_call(client: openai.AsyncOpenAI) -> None:
    r = await client.chat.completions.create(
        model="tiny",
        messages=MSG,
        functions=[TOOLS[0]["function"]],
        function_call={"name": "get_weather"},
        seed=2,
        max_tokens=60,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "function_call" and choice.message.tool_calls is None
    assert choice.message.function_call.name == "get_weather"
    jsonschema.validate(json.loads(choice.message.function_call.arguments), WEATHER)


async def test_tool_choice_none_never_calls(client: openai.AsyncOpenAI) -> None:
    r = await client.chat.completions.create(
        model="tiny", messages=MSG, tools=TOOLS, tool_choice="none", seed=0, max_tokens=20
    )
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"functions": [TOOLS[0]["function"]], "function_call": {"name": "nope"}}, "function_call"),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "tools[1]"),
        ({"tools": TOOLS, "functions": [TOOLS[0]["function"]]}, "functions"),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": "array", "uniqueItems": True}},
                    }
                ]
            },
            "tools[0].function.parameters",
        ),
    ],
)
async def test_inconsistent_tool_requests_are_400(http: httpx.AsyncClient, patch: dict, param: str) -> None:
    r = await http.post("/v1/chat/completions", json={"model": "tiny", "messages": MSG, **patch})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


async def test_round_trip_with_tool_results(client: openai.AsyncOpenAI) -> None:
    first = await client.chat.completions.create(
        model="tiny",
        messages=MSG,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        seed=5,
        max_tokens=60,
    )
    message = first.choices[0].message
    (call,) = message.tool_calls
    history = [
        *MSG,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    final = await client.chat.completions.create(model="tiny", messages=history, tools=TOOLS, max_tokens=10)
    assert final.choices[0].finish_reason in ("stop", "length", "tool_calls")


async def test_stop_strings_cut_constrained_output(client: openai.AsyncOpenAI) -> None:
    r = await client.chat.completions.create(
        model="tiny", messages=MSG, response_format=_format(SMALL), seed=4, max_tokens=60, stop=['"size"']
    )
    assert r.choices[0].finish_reason == "stop"
    assert (
        r.choices[0].message.content.startswith('{"name": "') and '"size"' not in r.choices[0].message.content
    )
