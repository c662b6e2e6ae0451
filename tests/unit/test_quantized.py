"""Weight-only int8/int4 linears: close to the float layer, the same for a row whatever the batch,
and a quantized model decoded on the engine's KV slots gives transformers' greedy tokens for the
same quantized weights (the engine computes exactly the model it was given)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from server.engine.model_runner import ModelRunner
from server.engine.quantized import Int4Linear, Int8Linear, quantize_model
from tests.unit.test_model_families import build, reference, served

LAYERS = {"int8": Int8Linear, "int4": Int4Linear}


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_a_quantized_linear_is_close_and_batch_independent(kind: str) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(128, 96)
    quantized = LAYERS[kind](linear)
    x = torch.randn(16, 128)
    out = quantized(x)
    relative = (out - linear(x)).norm() / linear(x).norm()
    assert relative < (0.01 if kind == "int8" else 0.1), relative
    alone = torch.cat([quantized(x[i : i + 1]) for i in range(16)])
    assert torch.equal(out, alone)


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("family", ["LlamaConfig", "Qwen3Config"])  # the lean forward, and the model's own
def test_a_quantized_model_decodes_as_transformers_does_with_the_same_weights(kind: str, family: str) -> None:
    model = build(family, hidden_size=64, intermediate_size=128, head_dim=16)
    expected_model = copy.deepcopy(model)
    quantize_model(expected_model, kind)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 512, (length,), generator=generator).tolist() for length in (23, 5, 40)]
    expected = [reference(expected_model, p, 12) for p in prompts]
    runner_model = copy.deepcopy(model)
    assert served(runner_model, prompts, 12, quantization=kind) == expected
    assert not any(type(m) is nn.Linear for m in runner_model.modules())
    assert isinstance(runner_model.lm_head, Int8Linear)  # the output layer keeps 8 bits


def test_quantization_runs_on_the_cpu_only() -> None:
    model = build("LlamaConfig")
    with pytest.raises(ValueError, match="CPU only"):
        ModelRunner(model.to("meta"), quantization="int4")
