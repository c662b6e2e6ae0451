"""The lean forward pass gives the model's own logits, step for step, or is not used at all."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from server.engine import lean_forward
from server.engine.cpu_kernels import _PackedLinear
from server.engine.model_runner import ModelRunner
from server.engine.scheduler import Scheduler
from server.engine.sequence import Sequence
from server.engine.types import EngineConfig, SamplingParams
from tests.conftest import TINY_SIZES

SIZES = dict(**TINY_SIZES, vocab_size=96, max_position_embeddings=256)


def twins(
    model_class: type[PreTrainedModel], config: PretrainedConfig, dtype: torch.dtype = torch.float32
) -> tuple[ModelRunner, ModelRunner]:
    """Two runners on identical random weights: the lean one (if it applies) and the model's own."""
    torch.manual_seed(0)
    first = model_class(config).eval().to(dtype)
    second = model_class(config).eval().to(dtype)
    second.load_state_dict(first.state_dict())
    return ModelRunner(first), ModelRunner(second, lean=False)


def logits_of_a_busy_run(runner: ModelRunner) -> list[torch.Tensor]:
    """Three sequences joining at different steps, a prompt read in chunks, greedy decoding."""
    scheduler = Scheduler(
        EngineConfig(
            max_running=4, max_kv_tokens=1024, max_batch_tokens=24, min_capacity=64, context_length=256
        )
    )
    prompts = [list(range(3, 40)), list(range(10, 19)), [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 60, 61]]
    arrivals = {0: [0], 1: [1], 3: [2]}
    steps = []
    for step in range(12):
        for index in arrivals.get(step, []):
            prompt = prompts[index]
            scheduler.add([Sequence(f"s{index}", list(prompt), len(prompt), SamplingParams(max_tokens=50))])
        plan = scheduler.schedule()
        logits = runner.run(plan)
        scheduler.update(plan)
        sampling = [c for c in plan.chunks if c.samples]
        for chunk, row in zip(sampling, logits, strict=True):
            chunk.seq.token_ids.append(int(row.argmax()))
        steps.append(logits)
    return steps


@pytest.mark.parametrize(
    ("model_class", "config"),
    [
        (LlamaForCausalLM, LlamaConfig(**SIZES)),
        (LlamaForCausalLM, LlamaConfig(**SIZES, attention_bias=True)),  # fused q/k/v bias, o_proj bias
        (Qwen2ForCausalLM, Qwen2Config(**SIZES)),
    ],
    ids=["llama", "llama-attention-bias", "qwen2"],
)
def test_lean_pass_gives_the_models_own_logits(
    model_class: type[PreTrainedModel], config: PretrainedConfig
) -> None:
    lean, own = twins(model_class, config)
    assert lean.lean is not None and own.lean is None
    for ours, theirs in zip(logits_of_a_busy_run(lean), logits_of_a_busy_run(own), strict=True):
        assert torch.allclose(ours, theirs, rtol=0, atol=1e-5)
    # On the CPU in float32 the fused projections are pre-packed without a second plain copy; the
    # model's own projections stay as they were (unpacked: only its own forward, unused, calls them).
    fused = lean.lean.layers[0].qkv
    assert isinstance(fused, _PackedLinear) and not hasattr(fused, "weight")
    attn = lean.model.model.layers[0].self_attn
    assert type(attn.q_proj) is torch.nn.Linear and isinstance(attn.o_proj, _PackedLinear)


def test_without_packing_the_projections_become_views_into_the_fused_weight() -> None:
    lean, own = twins(LlamaForCausalLM, LlamaConfig(**SIZES), dtype=torch.bfloat16)
    assert lean.lean is not None
    attn = lean.model.model.layers[0].self_attn
    assert attn.q_proj.weight.untyped_storage().data_ptr() == attn.v_proj.weight.untyped_storage().data_ptr()
    for ours, theirs in zip(logits_of_a_busy_run(lean), logits_of_a_busy_run(own), strict=True):
        assert torch.equal(ours, theirs)


def test_models_of_another_shape_keep_their_own_forward() -> None:
    runner, _ = twins(Qwen3ForCausalLM, Qwen3Config(**SIZES, head_dim=16))  # q/k norms: not Llama-shaped
    assert runner.lean is None
    assert all(isinstance(p, _PackedLinear) for p in (runner.model.model.layers[0].self_attn.q_proj,))
    assert len(logits_of_a_busy_run(runner)) == 12


def test_a_lean_pass_that_disagrees_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    real = lean_forward._rms_norm
    monkeypatch.setattr(lean_forward, "_rms_norm", lambda x, norm: real(x, norm) * 1.01)
    runner, own = twins(LlamaForCausalLM, LlamaConfig(**SIZES))
    assert runner.lean is None
    # Every projection is pre-packed again, and the run matches the model's own forward.
    assert isinstance(runner.model.model.layers[0].mlp.gate_proj, _PackedLinear)
    for ours, theirs in zip(logits_of_a_busy_run(runner), logits_of_a_busy_run(own), strict=True):
        assert torch.allclose(ours, theirs, rtol=0, atol=1e-5)
