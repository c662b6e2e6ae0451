"""History messages as real client libraries send them back: keys the API does not define inside
`messages` are accepted and dropped (the prompt is the same as without them), known keys keep their
types, and the top level stays strict."""

from __future__ import annotations

import copy
import logging
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, Field

from server.chat.templating import ChatTemplater
from server.protocol.request import ChatCompletionRequest
from tests.api.conftest import assert_error

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 8}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
ASK = {"role": "user", "content": "Weather in Paris?"}
FUNCTION = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
CALL = {"id": "call_1", "type": "function", "function": FUNCTION}
RESULT = {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 18}'}

# Each client's history, as that library puts it on the wire (the second request of a tool loop).
CLIENT_HISTORIES: dict[str, list[dict[str, Any]]] = {
    # LiteLLM (`openai/` and `hosted_vllm/` providers): `messages.append(response.choices[0].message)`
    # sends its Message model as dumped, with `provider_specific_fields` on the message and on
    # each tool call.
    "litellm": [
        ASK,
        {
            "content": None,
            "role": "assistant",
            "tool_calls": [{**CALL, "provider_specific_fields": None}],
            "function_call": None,
            "provider_specific_fields": {"refusal": None},
        },
        RESULT,
    ],
    # openai-python: the message of `.parse()` appended as it is: `parsed` and, on each tool
    # call, `function.parsed_arguments`.
    "openai-python parse": [
        ASK,
        {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "annotations": [],
            "audio": None,
            "function_call": None,
            "parsed": None,
            "tool_calls": [{**CALL, "function": {**CALL["function"], "parsed_arguments": {"city": "Paris"}}}],
        },
        RESULT,
    ],
    # Clients that accumulate stream deltas keep each tool call's `index`.
    "stream accumulator": [
        ASK,
        {"role": "assistant", "content": "", "tool_calls": [{"index": 0, **CALL}]},
        RESULT,
    ],
    # The OpenAI Cookbook's and LiteLLM's docs' tool message carries the function's `name`.
    "cookbook tool name": [
        ASK,
        {"role": "assistant", "tool_calls": [CALL]},
        {**RESULT, "name": "get_weather"},
    ],
    # Reasoning clients (the Vercel AI SDK, OpenCode) send the thinking back.
    "reasoning content": [
        ASK,
        {"role": "assistant", "content": None, "reasoning_content": "The user wants", "tool_calls": [CALL]},
        RESULT,
    ],
    # LangChain's ChatOpenAI and pydantic-ai send only API keys; they must keep working.
    "langchain": [
        ASK,
        {"content": "", "role": "assistant", "tool_calls": [{"type": "function", **CALL}]},
        RESULT,
    ],
}
CLEAN = [ASK, {"role": "assistant", "content": None, "tool_calls": [CALL]}, RESULT]


def _prompt(app: FastAPI, messages: list[dict[str, Any]]) -> str:
    request = ChatCompletionRequest.model_validate({"model": "tiny", "messages": messages})
    return app.state.registry.get("tiny").templater.render(request.messages).text


@pytest.mark.parametrize("client_name", sorted(CLIENT_HISTORIES))
async def test_each_clients_history_is_answered(
    client_name: str, http: httpx.AsyncClient, tiny_app: FastAPI
) -> None:
    messages = CLIENT_HISTORIES[client_name]
    body = {"model": "tiny", "messages": messages, "tools": [WEATHER], "max_tokens": 2}
    r = await http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    # The extra keys change nothing: the prompt is the one the keys the API defines make.
    clean = copy.deepcopy(CLEAN)
    clean[1]["content"] = messages[1].get("content")
    assert _prompt(tiny_app, messages) == _prompt(tiny_app, clean)


async def test_dropped_keys_are_named_in_a_debug_line(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="server.protocol.request"):
        body = {"model": "tiny", "messages": CLIENT_HISTORIES["litellm"], "max_tokens": 1}
        assert (await http.post("/v1/chat/completions", json=body)).status_code == 200
    lines = [r.getMessage() for r in caplog.records if "dropped keys" in r.getMessage()]
    assert any("AssistantMessage: provider_specific_fields" in line for line in lines), lines


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        # Known keys keep their types inside messages.
        (
            [ASK, {"role": "assistant", "tool_calls": [{**CALL, "id": 5}], "extra": 1}],
            "messages[1].tool_calls[0].id",
        ),
        (
            [{"role": "user", "content": [{"type": "text", "text": 1, "extra": 1}]}],
            "messages[0].content[0].text",
        ),
        ([{"role": "user", "content": 3, "extra": 1}], "messages[0].content"),
        # An unknown role or part type is still refused.
        ([{"role": "wizard", "content": "x"}], "messages[0]"),
        ([{"role": "user", "content": [{"type": "input_text", "text": "x"}]}], "messages[0].content[0]"),
    ],
)
async def test_known_keys_in_messages_stay_strict(
    http: httpx.AsyncClient, messages: list[dict[str, Any]], param: str
) -> None:
    r = await http.post("/v1/chat/completions", json={"model": "tiny", "messages": messages})
    assert_error(r, 400, param)


async def test_an_unknown_top_level_field_is_still_refused(http: httpx.AsyncClient) -> None:
    body = {"model": "tiny", "messages": [ASK], "provider_specific_fields": {}}
    error = assert_error(await http.post("/v1/chat/completions", json=body), 400, "provider_specific_fields")
    assert "Unrecognized request argument" in error["message"]


def test_a_tool_messages_name_reaches_a_template_that_reads_it(tiny_app: FastAPI) -> None:
    template = (
        "{# tool_calls #}{% for m in messages %}"
        "{{ m.role }}/{{ m.name or '-' }}: {{ m.content }}\n{% endfor %}"
    )
    templater = ChatTemplater(tiny_app.state.registry.get("tiny").tokenizer, template)
    messages = ChatCompletionRequest.model_validate(
        {"model": "tiny", "messages": CLIENT_HISTORIES["cookbook tool name"]}
    ).messages
    assert 'tool/get_weather: {"temp_c": 18}' in templater.render(messages).text


FORCED: dict[str, Any] = {"tool_choice": "required", "parallel_tool_calls": False, "max_tokens": 60}


class City(BaseModel):
    city: str = Field(max_length=8)


async def test_openai_python_parse_messages_go_back_as_history(client: openai.AsyncOpenAI) -> None:
    """The real SDK: `.parse()` with a pydantic tool, its message appended as it is, twice over."""
    tool = openai.pydantic_function_tool(City, name="get_weather")
    messages: list[Any] = [ASK]
    first = await client.chat.completions.parse(model="tiny", messages=messages, **FORCED, tools=[tool])
    message = first.choices[0].message
    assert message.tool_calls and message.tool_calls[0].function.parsed_arguments is not None
    messages += [message, {**RESULT, "tool_call_id": message.tool_calls[0].id}]
    second = await client.chat.completions.parse(
        model="tiny", messages=messages, response_format=City, max_tokens=60
    )
    assert second.choices[0].message.parsed is not None
    messages.append(second.choices[0].message)
    messages.append({"role": "user", "content": "Thanks"})
    third = await client.chat.completions.create(model="tiny", messages=messages, max_tokens=2)
    assert third.choices[0].finish_reason in {"stop", "length"}


async def test_openai_python_stream_helper_message_goes_back_as_history(client: openai.AsyncOpenAI) -> None:
    tool = openai.pydantic_function_tool(City, name="get_weather")
    async with client.chat.completions.stream(model="tiny", messages=[ASK], **FORCED, tools=[tool]) as stream:
        final = await stream.get_final_completion()
    message = final.choices[0].message
    assert message.tool_calls
    messages: list[Any] = [ASK, message, {**RESULT, "tool_call_id": message.tool_calls[0].id}]
    again = await client.chat.completions.create(model="tiny", messages=messages, max_tokens=2)
    assert again.choices
