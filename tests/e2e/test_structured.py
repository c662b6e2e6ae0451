"""Structured outputs and tool calls on the real default model, through the official SDK."""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.e2e.conftest import MODEL

pytestmark = pytest.mark.e2e

S = {"type": "string", "maxLength": 24}
SCHEMAS: list[dict] = [
    {
        "type": "object",
        "properties": {"name": S, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    {"type": "object", "properties": {"city": S, "country": S}, "required": ["city", "country"]},
    {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]}},
        "required": ["color"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": S, "minItems": 1, "maxItems": 3}},
        "required": ["tags"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "point": {
                "type": "object",
                "properties": {
                    "x": {"type": "number", "minimum": -10, "maximum": 10},
                    "y": {"type": "number", "minimum": -10, "maximum": 10},
                },
                "required": ["x", "y"],
                "additionalProperties": False,
            }
        },
        "required": ["point"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "id": {
                "anyOf": [
                    {"type": "integer", "minimum": 0, "maximum": 999},
                    {"type": "string", "pattern": "^[A-Z]{3}$"},
                ]
            }
        },
        "required": ["id"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
        "required": ["zip"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "reason": S},
        "required": ["ok", "reason"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"name": S, "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
                    "required": ["name", "qty"],
                    "additionalProperties": False,
                },
                "maxItems": 3,
            }
        },
        "required": ["items"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {"score": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}},
        "required": ["score"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {"date": {"type": "string", "pattern": "^20[0-9]{2}-[01][0-9]-[0-3][0-9]$"}},
        "required": ["date"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "title": S,
            "year": {"type": "integer", "minimum": 1900, "maximum": 2030},
            "genre": {"enum": ["drama", "comedy", "horror"]},
        },
        "required": ["title", "year", "genre"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "answer": {"type": "string", "enum": ["yes", "no", "maybe"]},
            "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
        },
        "required": ["answer", "confidence"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {"email": {"type": "string", "pattern": "^[a-z]{1,10}@[a-z]{1,10}\\.com$"}},
        "required": ["email"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "matrix": {
                "type": "array",
                "items": {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 0, "maximum": 9},
                    "minItems": 2,
                    "maxItems": 2,
                },
                "minItems": 2,
                "maxItems": 2,
            }
        },
        "required": ["matrix"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {
                    "name": S,
                    "address": {
                        "type": "object",
                        "properties": {
                            "street": S,
                            "number": {"type": "integer", "minimum": 1, "maximum": 999},
                        },
                        "required": ["street", "number"],
                        "additionalProperties": False,
                    },
                },
                "required": ["name", "address"],
                "additionalProperties": False,
            }
        },
        "required": ["user"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "value": {
                "anyOf": [
                    {"type": "null"},
                    {"type": "boolean"},
                    {"type": "integer", "minimum": 0, "maximum": 9},
                ]
            }
        },
        "required": ["value"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "temperature": {"type": "number", "minimum": -50, "maximum": 60},
            "unit": {"const": "celsius"},
        },
        "required": ["temperature", "unit"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "$defs": {
            "pet": {
                "type": "object",
                "properties": {"kind": {"enum": ["cat", "dog"]}, "name": S},
                "required": ["kind", "name"],
                "additionalProperties": False,
            }
        },
        "properties": {
            "pets": {"type": "array", "items": {"$ref": "#/$defs/pet"}, "minItems": 1, "maxItems": 2}
        },
        "required": ["pets"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "summary": {"type": "string", "minLength": 3, "maxLength": 40},
            "words": {"type": "integer", "minimum": 1, "maximum": 50},
        },
        "required": ["summary", "words"],
        "additionalProperties": False,
    },
]
PROMPTS = [
    "Describe a person.",
    "Name a city and its country.",
    "Pick a color.",
    "Give some tags for a blog post about tea.",
    "Give a point on a plane.",
    "Give an identifier.",
    "Give a US zip code.",
    "Is the sky blue? Explain briefly.",
    "List groceries to buy.",
    "Rate this movie from 0 to 1.",
    "When is the next holiday?",
    "Describe a movie.",
    "Will it rain tomorrow?",
    "Give an email address.",
    "Give a 2x2 matrix.",
    "Describe a user with an address.",
    "Give any value.",
    "What is the temperature outside?",
    "Describe my pets.",
    "Summarize the story of Cinderella.",
]


async def test_twenty_json_schemas_every_output_validates(async_client: openai.AsyncOpenAI) -> None:
    async def ask(i: int) -> tuple[str | None, str]:
        r = await async_client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": PROMPTS[i]}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": f"s{i}", "schema": SCHEMAS[i], "strict": True},
            },
            temperature=0,
            max_tokens=200,
        )
        return r.choices[0].finish_reason, r.choices[0].message.content

    results = await asyncio.gather(*(ask(i) for i in range(len(SCHEMAS))))
    for i, (finish, content) in enumerate(results):
        assert finish == "stop", (i, content)
        jsonschema.validate(json.loads(content), SCHEMAS[i])


WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "maxLength": 30}},
    "required": ["timezone"],
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": WEATHER,
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "description": "Current time in a timezone", "parameters": TIME},
    },
]
TOOL_PROMPTS = [
    "What's the weather in Paris?",
    "Is it cold in Oslo right now?",
    "Weather for Tokyo in fahrenheit please.",
    "Should I take an umbrella in London?",
    "How hot is it in Cairo?",
    "What time is it in New York?",
    "Tell me the weather in Berlin.",
    "Current conditions in Sydney?",
    "Is it snowing in Montreal?",
    "Weather in Lima?",
]


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
async def test_forced_and_named_tool_calls_on_ten_prompts(
    async_client: openai.AsyncOpenAI, choice: object
) -> None:
    schemas = {"get_weather": WEATHER, "get_time": TIME}

    async def ask(prompt: str) -> openai.types.chat.ChatCompletion:
        return await async_client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompt}],
            tools=TOOLS,
            tool_choice=choice,
            temperature=0,
            max_tokens=200,  # the model often makes two or three calls (parallel calls are allowed)
        )

    for r in await asyncio.gather(*(ask(p) for p in TOOL_PROMPTS)):
        assert r.choices[0].finish_reason == "tool_calls", r.choices[0].message
        for call in r.choices[0].message.tool_calls:
            if isinstance(choice, dict):
                assert call.function.name == "get_weather"
            jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])


class Movie(BaseModel):
    title: str = Field(max_length=30)
    year: int = Field(ge=1900, le=2030)
    genre: Literal["drama", "comedy", "horror", "animation"]


def test_sdk_parse_with_a_pydantic_model(sync_client: openai.OpenAI) -> None:
    completion = sync_client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe the movie Toy Story."}],
        response_format=Movie,
        temperature=0,
        max_tokens=100,
    )
    movie = completion.choices[0].message.parsed
    assert isinstance(movie, Movie)


def test_tool_round_trip(sync_client: openai.OpenAI) -> None:
    messages: list = [{"role": "user", "content": "What's the weather in Paris?"}]
    first = sync_client.chat.completions.create(
        model=MODEL,
        messages=messages,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=100,
    )
    message = first.choices[0].message
    (call,) = message.tool_calls
    messages.append(message)  # the SDK's own message object, sent back as history
    messages.append(
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "clear"}'}
    )
    final = sync_client.chat.completions.create(
        model=MODEL, messages=messages, tools=TOOLS, temperature=0, max_tokens=60
    )
    assert final.choices[0].finish_reason in ("stop", "tool_calls", "length")
    assert final.choices[0].message.content or final.choices[0].message.tool_calls
