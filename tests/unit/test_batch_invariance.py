"""A sequence's logits do not depend on what else the engine runs: alone, beside other requests,
with its prompt read in chunks, or from a cached prefix, every logit is bitwise the same with int4
weights, whose kernel gives a row the same result whatever the batch (float32 matrix multiplies may
round by batch shape, depending on the CPU, so they are not held to bitwise equality here)."""

from __future__ import annotations

import pytest
import torch

from server.engine.model_runner import ModelRunner
from server.engine.scheduler import Scheduler
from server.engine.sequence import Sequence
from server.engine.types import EngineConfig, SamplingParams
from tests.unit.test_model_families import VOCAB, build

NEW = 10


def config(max_batch_tokens: int) -> EngineConfig:
    return EngineConfig(
        max_running=4,
        max_kv_tokens=4 * 512,
        max_batch_tokens=max_batch_tokens,
        min_capacity=64,
        context_length=512,
    )


def logits_of(
    runner: ModelRunner, scheduler: Scheduler, prompts: list[list[int]]
) -> list[list[torch.Tensor]]:
    """Greedy decoding of the prompts together; each sequence's sampled logits, step by step."""
    params = SamplingParams(max_tokens=NEW, temperature=0.0)
    seqs = [Sequence(f"s{i}-{id(p)}", list(p), len(p), params) for i, p in enumerate(prompts)]
    scheduler.add(seqs)
    rows: dict[str, list[torch.Tensor]] = {s.request_id: [] for s in seqs}
    while any(s.generated < NEW for s in seqs):
        plan = scheduler.schedule()
        logits = runner.run(plan)
        scheduler.update(plan)
        for chunk, row in zip([c for c in plan.chunks if c.samples], logits, strict=True):
            rows[chunk.seq.request_id].append(row)
            chunk.seq.token_ids.append(int(row.argmax()))
            if chunk.seq.generated >= NEW:
                scheduler.finish(chunk.seq)
    return [rows[s.request_id] for s in seqs]


def scenarios(
    runner: ModelRunner, prompt: list[int], others: list[list[int]]
) -> dict[str, list[torch.Tensor]]:
    (alone,) = logits_of(runner, Scheduler(config(512)), [prompt])
    # Beside three others with a small budget: the prompts are read in chunks that share each step
    # with the others' chunks and decodes.
    tight = Scheduler(config(40))
    batched = logits_of(runner, tight, [others[0], prompt, others[1], others[2]])[1]
    # The same prompt again on that scheduler: its prefix comes from the cache (cut to a block bound).
    cached = logits_of(runner, tight, [others[1], prompt])[1]
    assert tight.block == 32
    return {"alone": alone, "batched": batched, "cached": cached}


def largest_difference(runs: dict[str, list[torch.Tensor]]) -> float:
    alone = runs.pop("alone")
    assert all(len(rows) == NEW for rows in runs.values())
    return max((a - b).abs().max().item() for rows in runs.values() for a, b in zip(alone, rows, strict=True))


# The default model's head size (64): smaller heads hide what padded attention changes.
SIZES = dict(
    hidden_size=192, intermediate_size=256, head_dim=64, num_attention_heads=3, num_key_value_heads=1
)


@pytest.mark.parametrize("family", ["LlamaConfig", "MistralConfig"])  # lean forward; model's own, windowed
def test_int4_logits_are_bitwise_the_same_alone_chunked_batched_and_cached(family: str) -> None:
    runner = ModelRunner(build(family, **SIZES), quantization="int4")
    assert runner.decode_rows_alone
    generator = torch.Generator().manual_seed(3)
    prompt = torch.randint(3, VOCAB, (70,), generator=generator).tolist()
    others = [torch.randint(3, VOCAB, (n,), generator=generator).tolist() for n in (45, 190, 7)]
    assert largest_difference(scenarios(runner, prompt, others)) == 0.0


def test_one_padded_attention_call_for_every_decode_row_is_not_exact() -> None:
    """What the per-row decode attention buys: in float32, where int4's rounding does not hide it,
    one padded call for all decode rows changes a row's logits beside longer ones."""
    runner = ModelRunner(build("LlamaConfig", **SIZES), decode_rows_alone=False)
    generator = torch.Generator().manual_seed(3)
    prompt = torch.randint(3, VOCAB, (70,), generator=generator).tolist()
    others = [torch.randint(3, VOCAB, (n,), generator=generator).tolist() for n in (45, 190, 7)]
    if largest_difference(scenarios(runner, prompt, others)) == 0.0:
        pytest.skip("padded attention happens to sum exactly on this CPU")
