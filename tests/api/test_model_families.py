"""The model-family matrix through the server: a tiny random checkpoint of every supported
architecture (sliding windows, sinks, softcapping, mixtures of experts included) with the chat
template of its family (tests/fixtures/chat_templates; the family's markers as control tokens where
its real tokenizer has them), served from a models.yaml. For each: it starts; greedy answers alone
and eight at once are transformers' `generate()` tokens, past every window; a stream gives the same
text; a json_schema answer validates; a forced tool call comes back in the family's own format and
goes back through its template as history."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import torch
from transformers import PreTrainedTokenizerBase

from server.protocol.request import ChatCompletionRequest
from tests.api.conftest import running_app
from tests.api.test_tool_families import CONTROL_TOKENS, TEMPLATES, forced_call, thinking_ended
from tests.api.test_tool_families import FAMILIES as TOOL_FORMATS
from tests.conftest import tiny_config_yaml
from tests.unit.test_model_families import FAMILIES, build, reference

NEW = 24
# family: (architecture, chat template; None: the tokenizer's own ChatML and our tool prompt)
MATRIX: dict[str, tuple[str, str | None]] = {
    "Llama 3.1": ("LlamaConfig", "llama3_json.jinja"),
    "Llama 3.2 pythonic": ("LlamaConfig", "llama3_pythonic.jinja"),
    "Mistral v0.3 (sliding window)": ("MistralConfig", "mistral.jinja"),
    "Mistral Small 3.2": ("MistralConfig", "mistral_args.jinja"),
    "Qwen2.5 (sliding window)": ("Qwen2Config", "qwen2_5.jinja"),
    "DeepSeek-R1-Distill-Qwen": ("Qwen2Config", "deepseek_r1.jinja"),
    "Qwen3": ("Qwen3Config", "qwen2_5.jinja"),
    "Qwen3-Coder (MoE)": ("Qwen3MoeConfig", "qwen3_coder.jinja"),
    "Gemma 2": ("Gemma2Config", "gemma2.jinja"),
    "Gemma 3": ("Gemma3TextConfig", "gemma3.jinja"),
    "Phi-4-mini": ("Phi3Config", "phi4_mini.jinja"),
    "Granite 3.3": ("GraniteConfig", "granite3.jinja"),
    "SmolLM3": ("SmolLM3Config", "hermes.jinja"),
    "gpt-oss": ("GptOssConfig", "gpt_oss.jinja"),
    "OLMo 2": ("Olmo2Config", None),
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather now",
            "parameters": {
                "type": "object",
                "properties": {"unit": {"enum": ["c", "f"]}},
                "required": ["unit"],
                "additionalProperties": False,
            },
        },
    }
]
ANSWER = {
    "type": "object",
    "properties": {"sky": {"enum": ["clear", "cloudy"]}},
    "required": ["sky"],
    "additionalProperties": False,
}


def test_the_matrix_covers_every_architecture_and_tool_format() -> None:
    assert {arch for arch, _ in MATRIX.values()} == set(FAMILIES)
    assert {t for _, t in MATRIX.values() if t} >= set(TOOL_FORMATS) - {"hermes.jinja", "qwen2_5.jinja"}


@pytest.mark.parametrize("family", sorted(MATRIX))
async def test_family(family: str, tokenizer: PreTrainedTokenizerBase, tmp_path: Path) -> None:
    arch, template = MATRIX[family]
    vocabulary = copy.deepcopy(tokenizer)
    if template in CONTROL_TOKENS:
        vocabulary.add_special_tokens({"additional_special_tokens": CONTROL_TOKENS[template]})
    special = {
        "bos_token_id": vocabulary.bos_token_id,
        "eos_token_id": vocabulary.eos_token_id,
        "pad_token_id": None,
    }
    model = build(arch, vocab_size=len(vocabulary), **special)
    model.save_pretrained(tmp_path / "model")
    vocabulary.save_pretrained(tmp_path / "model")
    extra = f"    chat_template: {TEMPLATES / template}\n" if template else ""
    bodies = [
        {
            "model": "tiny",
            "messages": [{"role": "user", "content": f"Request {i}: " + "tell me more " * (i + 1)}],
            "max_tokens": NEW,
            "temperature": 0,
        }
        for i in range(8)
    ]
    async with running_app(tiny_config_yaml(tmp_path / "model", tmp_path, extra)) as app:
        served = app.state.registry.get("tiny")
        prompts = [
            served.templater.render(ChatCompletionRequest.model_validate(b).messages).token_ids
            for b in bodies
        ]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=120) as http:
            alone = await http.post("/v1/chat/completions", json=bodies[-1])
            replies = await asyncio.gather(*(http.post("/v1/chat/completions", json=b) for b in bodies))
            streamed = await _streamed_text(http, bodies[-1])
            structured = await http.post(
                "/v1/chat/completions",
                json={
                    **bodies[0],
                    **thinking_ended(served),
                    "response_format": {
                        "type": "json_schema",
                        "json_schema": {"name": "answer", "schema": ANSWER, "strict": True},
                    },
                },
            )
            await _forced_call_round_trip(http, served)
    content = _text(alone.json()["choices"][0]["message"])
    assert content == _text(replies[-1].json()["choices"][0]["message"]) == streamed
    for prompt, reply in zip(prompts, replies, strict=True):
        assert reply.status_code == 200, reply.text
        choice = reply.json()["choices"][0]
        expected = reference_until_eos(model, prompt, vocabulary.eos_token_id)
        assert _text(choice["message"]) == vocabulary.decode(expected, skip_special_tokens=True), family
    assert structured.status_code == 200, structured.text
    jsonschema.validate(json.loads(structured.json()["choices"][0]["message"]["content"]), ANSWER)


def _text(message: dict) -> str:
    """What the model wrote: a reasoning model's random words are its reasoning (the DeepSeek-R1
    prompt opens the think block), then content."""
    return (message.get("reasoning") or "") + (message.get("content") or "")


async def _streamed_text(http: httpx.AsyncClient, body: dict) -> str:
    text = []
    async with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    text.append(_text(choice["delta"]))
    return "".join(text)


async def _forced_call_round_trip(http: httpx.AsyncClient, served: Any) -> None:
    """A forced call in the family's format (the grammar makes random weights write it), then the
    call and its result sent back: the template renders them (a second answer comes)."""
    ask = [{"role": "user", "content": "Weather?"}]
    body = {**forced_call(served), "messages": ask, "tools": TOOLS, "max_tokens": 60}
    first = await http.post("/v1/chat/completions", json=body)
    tool_format = served.tool_parser.name
    assert first.status_code == 200, first.text
    choice = first.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls", (tool_format, choice)
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(call["function"]["arguments"]), TOOLS[0]["function"]["parameters"])
    result = {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}
    history = [*ask, choice["message"], result]
    again = await http.post(
        "/v1/chat/completions", json={"model": "tiny", "messages": history, "tools": TOOLS, "max_tokens": 2}
    )
    assert again.status_code == 200, again.text


def reference_until_eos(model: torch.nn.Module, prompt: list[int], eos: int) -> list[int]:
    tokens = reference(model, prompt, NEW)
    return tokens[: tokens.index(eos)] if eos in tokens else tokens
