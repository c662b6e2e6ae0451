"""`quantization: int4` in models.yaml: the model starts with its linears kept quantized and
answers what transformers' generate() answers with the same quantized weights."""

from __future__ import annotations

import copy
from pathlib import Path

import httpx
import torch
from transformers import AutoModelForCausalLM

from server.engine.quantized import Int4Linear, Int8Linear, quantize_model
from server.protocol.request import ChatCompletionRequest
from tests.api.conftest import running_app
from tests.conftest import tiny_config_yaml
from tests.unit.test_model_families import reference


async def test_a_quantized_model_is_served_from_models_yaml(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = tiny_config_yaml(tiny_model_dir, tmp_path, "    quantization: int4\n")
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 12}
    async with running_app(path) as app:
        served = app.state.registry.get("tiny")
        prompt = served.templater.render(ChatCompletionRequest.model_validate(body).messages).token_ids
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as http:
            r = await http.post("/v1/chat/completions", json={**body, "temperature": 0})
    assert r.status_code == 200, r.text
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    quantized = copy.deepcopy(model)
    quantize_model(quantized, "int4")
    kinds = {type(m) for m in quantized.modules()}
    assert Int4Linear in kinds and Int8Linear in kinds  # int8 for the output layer
    expected = reference(quantized, prompt, 12)
    eos = served.tokenizer.eos_token_id
    expected = expected[: expected.index(eos)] if eos in expected else expected
    assert r.json()["choices"][0]["message"]["content"] == served.tokenizer.decode(
        expected, skip_special_tokens=True
    )
