"""Exact compute per architecture: tiny random checkpoints of each family, greedy decoding on the
engine's KV slots (alone, and batched with sequences of other lengths) against transformers'
`generate(do_sample=False)`, with prompts and outputs longer than any sliding window."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, PreTrainedModel

from server.engine.kv_cache import UnsupportedAttention
from server.engine.model_runner import ModelRunner
from server.engine.scheduler import Scheduler
from server.engine.sequence import Sequence
from server.engine.types import EngineConfig, SamplingParams
from tests.conftest import TINY_SIZES

VOCAB = 512
WINDOW = 8
COMMON = dict(
    **TINY_SIZES,
    vocab_size=VOCAB,
    head_dim=16,
    max_position_embeddings=512,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
)
LAYERS = ["sliding_attention", "full_attention"]
# config class: extra settings (what makes each family itself: windows, sinks, softcapping, MoE)
FAMILIES: dict[str, dict[str, Any]] = {
    "LlamaConfig": {},
    "MistralConfig": {"sliding_window": WINDOW},
    "Qwen2Config": {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1},
    "Qwen3Config": {},
    "Qwen3MoeConfig": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32},
    "Gemma2Config": {
        "sliding_window": WINDOW,
        "query_pre_attn_scalar": 16,
        "attn_logit_softcapping": 20.0,
        "final_logit_softcapping": 15.0,
    },
    "Gemma3TextConfig": {"sliding_window": WINDOW, "query_pre_attn_scalar": 16, "layer_types": LAYERS},
    "Phi3Config": {},
    "GraniteConfig": {
        "embedding_multiplier": 2.0,
        "attention_multiplier": 0.2,
        "residual_multiplier": 0.5,
        "logits_scaling": 4.0,
    },
    "SmolLM3Config": {"no_rope_layers": [1, 0]},
    "GptOssConfig": {
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "sliding_window": WINDOW,
        "layer_types": LAYERS,
    },
    "Olmo2Config": {},
}


def build(name: str, **overrides: Any) -> PreTrainedModel:
    torch.manual_seed(0)
    config = getattr(transformers, name)(**{**COMMON, **FAMILIES[name], **overrides})
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)  # random weights with an opinion: greedy paths are not ties
        if hasattr(model.model.layers[0].self_attn, "sinks"):
            for layer in model.model.layers:
                layer.self_attn.sinks.uniform_(-1.0, 3.0)
    return model


def reference(model: PreTrainedModel, prompt: list[int], new: int) -> list[int]:
    with torch.no_grad():
        ids = torch.tensor([prompt])
        model.generation_config.eos_token_id = None  # no stop: both decode exactly `new` tokens
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False)
    return out[0, len(prompt) :].tolist()


def served(
    model: PreTrainedModel, prompts: list[list[int]], new: int, quantization: Any = None
) -> list[list[int]]:
    """Greedy decoding of all prompts together on the engine's scheduler and KV slots."""
    runner = ModelRunner(model, quantization=quantization)
    config = EngineConfig(
        max_running=8,
        max_kv_tokens=8 * 256,
        max_batch_tokens=32,
        max_waiting=64,
        min_capacity=64,
        context_length=256,
    )
    scheduler = Scheduler(config)
    seqs = [
        Sequence(f"s{i}", list(p), len(p), SamplingParams(max_tokens=new, temperature=0.0))
        for i, p in enumerate(prompts)
    ]
    scheduler.add(seqs)
    while any(s.generated < new for s in seqs):
        plan = scheduler.schedule()
        logits = runner.run(plan)
        scheduler.update(plan)
        sampling = [c.seq for c in plan.chunks if c.samples]
        for seq, row in zip(sampling, logits, strict=True):
            seq.token_ids.append(int(row.argmax()))
            if seq.generated >= new:
                scheduler.finish(seq)
    return [s.token_ids[s.num_prompt :] for s in seqs]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_tokens_match_transformers_alone_and_batched(family: str) -> None:
    model = build(family)
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, VOCAB, (length,), generator=generator).tolist() for length in (23, 5, 40, 12)]
    new = 20  # every sequence ends well past the window of 8
    expected = [reference(model, prompt, new) for prompt in prompts]
    assert served(model, prompts[:1], new) == expected[:1]
    assert served(model, prompts, new) == expected


def test_a_model_whose_attention_takes_an_unknown_argument_does_not_start() -> None:
    model = build("LlamaConfig")
    layer = model.model.layers[0].self_attn
    forward = layer.forward

    def with_extra(*args: Any, **kwargs: Any) -> Any:
        return forward(*args, **kwargs, alibi_slopes=torch.ones(4))

    layer.forward = with_extra  # type: ignore[method-assign]
    with pytest.raises(UnsupportedAttention, match="alibi_slopes"):
        ModelRunner(model, lean=False)
