"""Tiny random-weight models with the chat template of each supported family: the tools are
rendered the family's way, the parser is picked from the template, and a forced call from random
weights still names the function with arguments that validate (the grammar guarantees it)."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from server.parsers.events import ToolSpec
from server.protocol.request import ChatCompletionRequest
from tests.api.conftest import running_app
from tests.conftest import TINY_SIZES, tiny_config_yaml

TEMPLATES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"
PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 8}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather now", "parameters": PARAMETERS},
    }
]
ASK = [{"role": "user", "content": "Weather in Paris?"}]
FORCED_CALL: dict = dict(
    model="tiny", messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False
)
FAMILIES = {
    # template file: (expected parser, a marker of the family's tool prompt in the rendered prompt)
    "qwen2_5.jinja": ("hermes", "# Tools"),
    "hermes.jinja": ("hermes", "You are a function calling AI model"),
    "llama3_json.jinja": ("llama3_json", "Environment: ipython"),
    "llama3_pythonic.jinja": ("pythonic", "[func_name1("),
    "mistral.jinja": ("mistral", "[AVAILABLE_TOOLS]"),
    "granite3.jinja": ("granite", "<|start_of_role|>available_tools"),
    "phi4_mini.jinja": ("phi4_mini", "<|tool|>"),
    "mistral_args.jinja": ("mistral_args", "[AVAILABLE_TOOLS]"),
    "deepseek_r1.jinja": ("deepseek", "## Tools"),
    "gpt_oss.jinja": ("harmony", "namespace functions {"),
    "qwen3_coder.jinja": ("qwen3_xml", "<parameter>\n<name>city</name>"),
    "gemma3.jinja": ("gemma", "```tool_code"),
}
# The markers each family's real tokenizer holds as special (control) tokens; the others are text.
CONTROL_TOKENS = {
    "gpt_oss.jinja": ["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|call|>"],
    "llama3_json.jinja": ["<|python_tag|>"],
    "mistral_args.jinja": ["[TOOL_CALLS]", "[ARGS]"],
    "granite3.jinja": ["<|tool_call|>"],
    "phi4_mini.jinja": ["<|tool_call|>", "<|/tool_call|>"],
    "deepseek_r1.jinja": [
        "<think>",
        "</think>",
        "<｜tool▁calls▁begin｜>",
        "<｜tool▁calls▁end｜>",
        "<｜tool▁call▁begin｜>",
        "<｜tool▁sep｜>",
        "<｜tool▁call▁end｜>",
    ],
}


# What ends a reasoning model's free thinking, by its reasoning format.
THINKING_ENDS = {"think": "</think>", "harmony": "<|end|>"}


def thinking_ended(served: Any) -> dict:
    """A reasoning model may think freely before a constrained answer: random weights are pushed
    to end the thinking at once (the answer after it is what these tests look at)."""
    end = THINKING_ENDS.get(served.reasoning.format or "")
    token_id = served.grammars.special_token(end) if end else None
    return {"logit_bias": {str(token_id): 100}} if token_id is not None else {}


def forced_call(served: Any) -> dict:
    return {**FORCED_CALL, **thinking_ended(served)}


def model_with_control_tokens(tokenizer: PreTrainedTokenizerBase, tokens: list[str], folder: Path) -> Path:
    """A tiny random-weight Llama whose vocabulary holds `tokens` as special tokens."""
    extended = copy.deepcopy(tokenizer)
    extended.add_special_tokens({"additional_special_tokens": tokens})
    torch.manual_seed(0)
    config = LlamaConfig(
        **TINY_SIZES, vocab_size=len(extended), max_position_embeddings=512, tie_word_embeddings=False
    )
    LlamaForCausalLM(config).save_pretrained(folder / "model")
    extended.save_pretrained(folder / "model")
    return folder / "model"


@pytest.fixture(scope="module", params=sorted(FAMILIES))
async def family(
    request: pytest.FixtureRequest,
    tiny_model_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[str, object, openai.AsyncOpenAI]]:
    template = TEMPLATES / request.param
    folder = tmp_path_factory.mktemp("cfg")
    model = tiny_model_dir
    if request.param in CONTROL_TOKENS:
        model = model_with_control_tokens(tokenizer, CONTROL_TOKENS[request.param], folder)
    path = tiny_config_yaml(model, folder, f"    chat_template: {template}\n")
    async with running_app(path) as app:
        for token in CONTROL_TOKENS.get(request.param, []):
            assert app.state.registry.get("tiny").grammars.special_token(token) is not None
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=120) as http:
            client = openai.AsyncOpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http)
            yield request.param, app.state.registry.get("tiny"), client


async def test_parser_is_picked_from_the_template(family: tuple) -> None:
    name, served, _ = family
    assert served.tool_parser.name == FAMILIES[name][0]


async def test_tools_and_tool_history_render_the_family_way(family: tuple) -> None:
    name, served, _ = family
    request = ChatCompletionRequest.model_validate(
        {
            "model": "tiny",
            "messages": [
                *ASK,
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {
                                "name": "get_weather",
                                "arguments": '{"city": "Paris", "unit": "c"}',
                            },
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
            ],
        }
    )
    prompt = served.templater.render(request.messages, (ToolSpec("get_weather", PARAMETERS, "Weather now"),))
    assert FAMILIES[name][1] in prompt.text
    assert "Weather now" in prompt.text  # the tool's description reached the prompt
    assert "sunny, 21 C" in prompt.text
    assert "Paris" in prompt.text  # the earlier call, rendered from its arguments object


@pytest.mark.parametrize("stream", [False, True])
async def test_forced_call_from_random_weights_is_valid(family: tuple, stream: bool) -> None:
    name, served, client = family
    kwargs = forced_call(served)
    if stream:
        chunks = [c async for c in await client.chat.completions.create(**kwargs, stream=True, max_tokens=80)]
        calls = [tc for c in chunks for ch in c.choices for tc in ch.delta.tool_calls or []]
        assert _id_fits(name, calls[0].id) and calls[0].function.name == "get_weather"
        arguments = "".join(tc.function.arguments or "" for tc in calls)
        finish = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
        assert finish == ["tool_calls"]
    else:
        r = await client.chat.completions.create(**kwargs, max_tokens=80)
        assert r.choices[0].finish_reason == "tool_calls"
        (call,) = r.choices[0].message.tool_calls
        assert call.function.name == "get_weather" and _id_fits(name, call.id)
        arguments = call.function.arguments
    jsonschema.validate(json.loads(arguments), PARAMETERS)


def _id_fits(template: str, call_id: str) -> bool:
    """Mistral's template takes back only 9 alphanumeric characters; the others take OpenAI's ids."""
    if template == "mistral.jinja":
        return len(call_id) == 9 and call_id.isalnum()
    return call_id.startswith("call_")


async def test_a_response_and_foreign_ids_go_back_as_history(family: tuple) -> None:
    """The call the server made, sent back with its result, renders (Mistral's template raises on
    ids not its own); so does a history whose ids came from elsewhere (`call_...`), mapped the same
    way in the call and in its result."""
    name, served, client = family
    first = await client.chat.completions.create(**forced_call(served), max_tokens=80)
    message = first.choices[0].message
    (call,) = message.tool_calls
    history = [*ASK, message, {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    again = await client.chat.completions.create(model="tiny", messages=history, tools=TOOLS, max_tokens=2)
    assert again.choices
    foreign = {
        "id": "call_from_another_server_42",
        "type": "function",
        "function": {"name": "get_weather", "arguments": "{}"},
    }
    request = ChatCompletionRequest.model_validate(
        {
            "model": "tiny",
            "messages": [
                *ASK,
                {"role": "assistant", "tool_calls": [foreign]},
                {"role": "tool", "tool_call_id": foreign["id"], "content": "sunny"},
            ],
        }
    )
    text = served.templater.render(request.messages).text
    if name == "mistral.jinja":
        mapped = served.templater.call_ids.fit(foreign["id"])
        assert len(mapped) == 9 and text.count(mapped) == 2 and foreign["id"] not in text


@pytest.fixture(scope="module")
async def mistral_control_tokens(
    tokenizer: PreTrainedTokenizerBase, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[openai.AsyncOpenAI]:
    """A Mistral-style vocabulary: `[TOOL_CALLS]` is one special (control) token, as in the v3
    tokenizers, which decoding with special tokens skipped used to drop before the parser saw it."""
    folder = tmp_path_factory.mktemp("mistral-control")
    model = model_with_control_tokens(tokenizer, ["[TOOL_CALLS]"], folder)
    path = tiny_config_yaml(model, folder, f"    chat_template: {TEMPLATES / 'mistral.jinja'}\n")
    async with running_app(path) as app:
        assert app.state.registry.get("tiny").grammars.special_token("[TOOL_CALLS]") is not None
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=120) as http:
            yield openai.AsyncOpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_call_opened_by_a_control_token_is_parsed(
    mistral_control_tokens: openai.AsyncOpenAI, stream: bool
) -> None:
    client = mistral_control_tokens
    kwargs = {**FORCED_CALL, "max_tokens": 80}
    if stream:
        chunks = [c async for c in await client.chat.completions.create(**kwargs, stream=True)]
        calls = [tc for c in chunks for ch in c.choices for tc in ch.delta.tool_calls or []]
        content = "".join(ch.delta.content or "" for c in chunks for ch in c.choices)
        finish = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
        assert calls and calls[0].function.name == "get_weather" and finish == ["tool_calls"]
        arguments = "".join(tc.function.arguments or "" for tc in calls)
    else:
        r = await client.chat.completions.create(**kwargs)
        assert r.choices[0].finish_reason == "tool_calls", r.choices[0]
        (call,) = r.choices[0].message.tool_calls
        content = r.choices[0].message.content or ""
        arguments = call.function.arguments
    assert "[TOOL_CALLS]" not in content
    jsonschema.validate(json.loads(arguments), PARAMETERS)


async def test_parallel_calls_only_where_the_template_takes_them_back(family: tuple) -> None:
    """Llama 3.1's template refuses a turn of several calls, gpt-oss's renders only the first: the
    model makes one at a time, and asking for parallel calls is a 400 naming the field. The other
    families take several."""
    name, served, client = family
    single = name in ("llama3_json.jinja", "gpt_oss.jinja")
    assert served.templater.parallel_calls is not single
    ask = {**forced_call(served), "max_tokens": 120}
    del ask["parallel_tool_calls"]
    if single:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(**ask, parallel_tool_calls=True)
        assert refused.value.code == "unsupported_parameter" and refused.value.param == "parallel_tool_calls"
        for seed in range(3):  # unset: one call, whatever the random weights would like
            r = await client.chat.completions.create(**ask, seed=seed, temperature=1.0)
            assert len(r.choices[0].message.tool_calls or []) == 1
    else:  # random weights may go on calling until the limit cuts a call: then it is text
        r = await client.chat.completions.create(**ask, parallel_tool_calls=True)
        assert r.choices[0].message.tool_calls or r.choices[0].finish_reason == "length"


async def test_a_call_cut_by_max_tokens_is_text_with_finish_reason_length(family: tuple) -> None:
    """Eight tokens are too few for any family's call: the answer is what the model wrote, as
    content, not a call with arguments that are not JSON."""
    _, served, client = family
    r = await client.chat.completions.create(**forced_call(served), max_tokens=8)
    choice = r.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.tool_calls is None
    # What the model wrote is the content, unless it was all thinking (a reasoning model may use
    # the eight tokens on its reasoning before the call).
    assert choice.message.content or served.reasoning.format is not None
