"""Reasoning models end to end, on tiny random-weight checkpoints with each format's template
(tests/fixtures/chat_templates) and its markers as the control tokens the real tokenizers hold.

DeepSeek-R1's prompt opens the think block, so every word random weights write is reasoning until
`</think>`; a logit bias on `</think>` decides when the thinking ends: sampled with a seed, the
tests find a bias and seed that end it after a few words."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from transformers import PreTrainedTokenizerBase

from server.protocol.request import ChatCompletionRequest
from tests.api.conftest import running_app
from tests.api.test_tool_families import TEMPLATES, model_with_control_tokens
from tests.conftest import tiny_config_yaml

THINK = ["<think>", "</think>"]
HARMONY = ["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|call|>"]
ASK = [{"role": "user", "content": "Is it sunny in Paris?"}]
ANSWER = {
    "type": "object",
    "properties": {"sky": {"enum": ["clear", "cloudy"]}},
    "required": ["sky"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"unit": {"enum": ["c", "f"]}},
                "required": ["unit"],
                "additionalProperties": False,
            },
        },
    }
]


class Served:
    def __init__(self, app: Any, client: openai.AsyncOpenAI, http: httpx.AsyncClient) -> None:
        self.app, self.client, self.http = app, client, http
        self.model = app.state.registry.get("tiny")

    def token(self, text: str) -> int:
        token_id = self.model.grammars.special_token(text)
        assert token_id is not None
        return token_id


async def _serve(
    tokenizer: PreTrainedTokenizerBase, folder: Path, template: str, tokens: list[str], extra: str = ""
) -> AsyncIterator[Served]:
    model = model_with_control_tokens(tokenizer, tokens, folder)
    path = tiny_config_yaml(model, folder, f"    chat_template: {TEMPLATES / template}\n{extra}")
    async with running_app(path) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=120) as http:
            client = openai.AsyncOpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http)
            yield Served(app, client, http)


def _served_fixture(template: str, tokens: list[str], extra: str = "") -> Any:
    @pytest.fixture(scope="module")
    async def served(
        tokenizer: PreTrainedTokenizerBase, tmp_path_factory: pytest.TempPathFactory
    ) -> AsyncIterator[Served]:
        async for one in _serve(tokenizer, tmp_path_factory.mktemp("reasoning"), template, tokens, extra):
            yield one

    return served


deepseek = _served_fixture("deepseek_r1.jinja", THINK)
qwen3 = _served_fixture("qwen3.jinja", THINK)
gpt_oss = _served_fixture("gpt_oss.jinja", HARMONY, "    reasoning: {default_effort: high}\n")


def reasoning_of(message: Any) -> str | None:
    """The SDK keeps fields the API does not define in `model_extra`."""
    extra = message.model_extra or {}
    assert extra.get("reasoning") == extra.get("reasoning_content")
    return extra.get("reasoning")


async def ends_thinking_after_a_few_words(served: Served, **kwargs: Any) -> tuple[dict, Any]:
    """A request (bias on `</think>`, seed) whose sampled answer thinks a little, then answers.
    Random weights spread their probability thin over the vocabulary: a bias near ln(vocabulary
    size) gives `</think>` a fair chance at each step."""
    close = served.token("</think>")
    for bias in (7, 9, 11):
        for seed in range(8):
            body = {
                "model": "tiny",
                "messages": ASK,
                "seed": seed,
                "logit_bias": {str(close): bias},
                **kwargs,
            }
            r = await served.client.chat.completions.create(**body)
            message = r.choices[0].message
            answered = message.tool_calls if kwargs.get("tools") else message.content
            constrained = "tools" in kwargs or "response_format" in kwargs  # the answer ends
            ended = r.choices[0].finish_reason != "length" or not constrained
            if reasoning_of(message) and answered and ended:
                return body, r
    raise AssertionError("no bias and seed ended the thinking after some reasoning")


async def test_output_that_ends_inside_the_think_block_is_all_reasoning(deepseek: Served) -> None:
    r = await deepseek.client.chat.completions.create(model="tiny", messages=ASK, max_tokens=6)
    choice = r.choices[0]
    assert choice.finish_reason == "length" and choice.message.content is None
    assert reasoning_of(choice.message)
    assert r.usage.completion_tokens_details.reasoning_tokens == r.usage.completion_tokens == 6
    stream = await deepseek.client.chat.completions.create(
        model="tiny", messages=ASK, max_tokens=6, stream=True
    )
    deltas = [c.choices[0].delta for c in [c async for c in stream] if c.choices]
    assert any((d.model_extra or {}).get("reasoning_content") for d in deltas)
    assert not any(d.content for d in deltas)


async def test_reasoning_comes_apart_from_the_answer_streamed_and_whole(deepseek: Served) -> None:
    body, whole = await ends_thinking_after_a_few_words(deepseek, max_tokens=24)
    message = whole.choices[0].message
    assert "</think>" not in message.content and "</think>" not in reasoning_of(message)
    usage = whole.usage
    assert 0 < usage.completion_tokens_details.reasoning_tokens < usage.completion_tokens
    chunks = [c async for c in await deepseek.client.chat.completions.create(**body, stream=True)]
    kinds, reasoning, content = [], "", ""
    for chunk in chunks:
        for choice in chunk.choices:
            extra = choice.delta.model_extra or {}
            if extra.get("reasoning"):
                assert extra["reasoning_content"] == extra["reasoning"]
                reasoning += extra["reasoning"]
                kinds.append("reasoning")
            if choice.delta.content:
                content += choice.delta.content
                kinds.append("content")
    assert (reasoning, content) == (reasoning_of(message), message.content)
    assert kinds == sorted(kinds, key=lambda kind: kind != "reasoning")  # all reasoning first


async def test_a_json_schema_answer_follows_free_thinking(deepseek: Served) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER, "strict": True}}
    _, r = await ends_thinking_after_a_few_words(deepseek, max_tokens=48, response_format=fmt)
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), ANSWER)


async def test_a_forced_tool_call_follows_free_thinking(deepseek: Served) -> None:
    _, r = await ends_thinking_after_a_few_words(
        deepseek, max_tokens=120, tools=TOOLS, tool_choice="required", parallel_tool_calls=False
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    jsonschema.validate(json.loads(call.function.arguments), TOOLS[0]["function"]["parameters"])


async def test_deepseek_always_reasons(deepseek: Served) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await deepseek.client.chat.completions.create(model="tiny", messages=ASK, reasoning_effort="none")
    assert refused.value.param == "reasoning_effort" and "always reasons" in refused.value.message
    r = await deepseek.client.chat.completions.create(
        model="tiny", messages=ASK, reasoning_effort="high", max_tokens=2
    )
    assert r.choices[0].finish_reason == "length"


async def test_qwen3_thinking_switched_off_answers_without_a_think_block(qwen3: Served) -> None:
    templater = qwen3.model.templater
    body = {"model": "tiny", "messages": ASK, "max_tokens": 8, "temperature": 0}
    off = await qwen3.client.chat.completions.create(**body, reasoning_effort="none")
    assert reasoning_of(off.choices[0].message) is None and off.choices[0].message.content
    assert off.usage.completion_tokens_details.reasoning_tokens == 0
    assert qwen3.model.reasoning.switch == "enable_thinking"
    request = qwen3.model.reasoning.plan("none")
    assert request.template_kwargs == {"enable_thinking": False} and not request.thinks
    messages = ChatCompletionRequest.model_validate(body).messages
    assert "<think>\n\n</think>" in templater.render(messages, (), request.template_kwargs).text
    low = qwen3.model.reasoning.plan("low").template_kwargs
    assert "</think>" not in templater.render(messages, (), low).text


async def test_gpt_oss_effort_and_analysis_channel(gpt_oss: Served) -> None:
    model = gpt_oss.model
    assert model.reasoning.plan(None).template_kwargs == {"reasoning_effort": "high"}  # models.yaml default
    assert model.reasoning.plan("xhigh").template_kwargs == {"reasoning_effort": "high"}
    assert model.reasoning.plan("minimal").template_kwargs == {"reasoning_effort": "low"}
    with pytest.raises(openai.BadRequestError) as refused:
        await gpt_oss.client.chat.completions.create(model="tiny", messages=ASK, reasoning_effort="none")
    assert refused.value.param == "reasoning_effort"
    end = gpt_oss.token("<|end|>")
    r = await gpt_oss.client.chat.completions.create(
        model="tiny",
        messages=ASK,
        reasoning_effort="low",
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": ANSWER}},
        logit_bias={str(end): 100},
        max_tokens=60,
    )
    jsonschema.validate(json.loads(r.choices[0].message.content), ANSWER)  # the final channel's text


async def test_reasoning_is_kept_in_stored_completions(deepseek: Served) -> None:
    r = await deepseek.client.chat.completions.create(model="tiny", messages=ASK, max_tokens=4, store=True)
    stored = await deepseek.client.chat.completions.retrieve(r.id)
    assert reasoning_of(stored.choices[0].message) == reasoning_of(r.choices[0].message)


async def test_langchain_reads_the_reasoning(deepseek: Served) -> None:
    """LangChain's ChatOpenAI targets OpenAI's own fields only (it reports the reasoning tokens in
    usage_metadata); its ChatDeepSeek, what LangChain points users of vLLM-style servers to, reads
    `reasoning_content` (whole) and `reasoning`/`reasoning_content` deltas (streamed)."""
    from langchain_deepseek import ChatDeepSeek
    from langchain_openai import ChatOpenAI

    common: dict[str, Any] = {"model": "tiny", "api_key": "unused", "max_tokens": 5, "temperature": 0}
    chat = ChatOpenAI(base_url="http://testserver/v1", http_async_client=deepseek.http, **common)
    answer = await chat.ainvoke("Is it sunny?")
    assert answer.usage_metadata["output_token_details"]["reasoning"] == 5
    deep = ChatDeepSeek(api_base="http://testserver/v1", http_async_client=deepseek.http, **common)
    whole = await deep.ainvoke("Is it sunny?")
    assert whole.additional_kwargs["reasoning_content"]
    streamed = "".join(
        [c.additional_kwargs.get("reasoning_content", "") async for c in deep.astream("Is it sunny?")]
    )
    assert streamed == whole.additional_kwargs["reasoning_content"]
