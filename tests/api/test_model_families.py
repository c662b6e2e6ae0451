"""Through the server: a tiny random checkpoint of every supported architecture (sliding windows,
sinks, softcapping, mixtures of experts included), saved with the default model's tokenizer, served
from a models.yaml; a greedy request alone, then eight at once, each get transformers' `generate()`
tokens, past every window."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import torch
from transformers import PreTrainedTokenizerBase

from server.api.schemas.request import ChatCompletionRequest
from tests.api.conftest import running_app
from tests.conftest import tiny_config_yaml
from tests.unit.test_model_families import FAMILIES, build, reference

NEW = 24


@pytest.mark.parametrize("family", sorted(FAMILIES))
async def test_served_greedy_tokens_match_transformers(
    family: str, tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": None,
    }
    model = build(family, vocab_size=len(tokenizer), **special)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    bodies = [
        {
            "model": "tiny",
            "messages": [{"role": "user", "content": f"Request {i}: " + "tell me more " * (i + 1)}],
            "max_tokens": NEW,
            "temperature": 0,
        }
        for i in range(8)
    ]
    async with running_app(tiny_config_yaml(tmp_path / "model", tmp_path)) as app:
        served = app.state.registry.get("tiny")
        prompts = [
            served.templater.render(ChatCompletionRequest.model_validate(b).messages).token_ids
            for b in bodies
        ]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=120) as http:
            alone = await http.post("/v1/chat/completions", json=bodies[-1])
            replies = await asyncio.gather(*(http.post("/v1/chat/completions", json=b) for b in bodies))
    assert alone.json()["choices"][0]["message"] == replies[-1].json()["choices"][0]["message"]
    for prompt, reply in zip(prompts, replies, strict=True):
        assert reply.status_code == 200, reply.text
        choice = reply.json()["choices"][0]
        expected = reference_until_eos(model, prompt, tokenizer.eos_token_id)
        assert choice["message"]["content"] == tokenizer.decode(expected, skip_special_tokens=True), family


def reference_until_eos(model: torch.nn.Module, prompt: list[int], eos: int) -> list[int]:
    tokens = reference(model, prompt, NEW)
    return tokens[: tokens.index(eos)] if eos in tokens else tokens
