import torch

from server.engine.sampler import SequenceSampler
from server.engine.types import SamplingParams

VOCAB = 50


def _logits(seed: int = 0) -> torch.Tensor:
    return torch.randn(VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def _run(params: SamplingParams, steps: int = 20) -> list[int]:
    sampler = SequenceSampler(params, VOCAB)
    return [sampler.sample(_logits(step)).token_id for step in range(steps)]


def test_greedy_is_argmax() -> None:
    tokens = _run(SamplingParams(max_tokens=5, temperature=0.0), steps=5)
    assert tokens == [int(torch.argmax(_logits(step))) for step in range(5)]


def test_same_seed_same_tokens_and_different_seed_differs() -> None:
    params = SamplingParams(max_tokens=20, temperature=1.0, seed=1234)
    assert _run(params) == _run(params)
    assert _run(params) != _run(SamplingParams(max_tokens=20, temperature=1.0, seed=4321))


def test_logit_bias_bans_and_forces() -> None:
    logits = _logits()
    best = int(torch.argmax(logits))
    banned = SequenceSampler(
        SamplingParams(max_tokens=1, temperature=0.0, logit_bias=((best, -100.0),)), VOCAB
    )
    assert banned.sample(logits).token_id != best
    forced = SequenceSampler(
        SamplingParams(max_tokens=1, temperature=1.5, seed=3, logit_bias=((7, 100.0),)), VOCAB
    )
    assert all(forced.sample(_logits(step)).token_id == 7 for step in range(20))


def test_tiny_top_p_keeps_only_the_most_likely_token() -> None:
    tokens = _run(SamplingParams(max_tokens=20, temperature=1.0, top_p=0.0, seed=5))
    assert tokens == [int(torch.argmax(_logits(step))) for step in range(20)]


def test_frequency_penalty_discourages_repeats() -> None:
    logits = torch.zeros(VOCAB)
    logits[3] = 1.0
    sampler = SequenceSampler(SamplingParams(max_tokens=5, temperature=0.0, frequency_penalty=2.0), VOCAB)
    first, second = sampler.sample(logits).token_id, sampler.sample(logits).token_id
    assert first == 3 and second != 3


def test_presence_penalty_discourages_repeats() -> None:
    logits = torch.zeros(VOCAB)
    logits[3] = 1.0
    sampler = SequenceSampler(SamplingParams(max_tokens=5, temperature=0.0, presence_penalty=2.0), VOCAB)
    assert [sampler.sample(logits).token_id for _ in range(2)][1] != 3


def test_logprobs_come_from_the_sampling_distribution_sorted() -> None:
    logits = _logits()
    sampler = SequenceSampler(SamplingParams(max_tokens=1, temperature=0.0, top_logprobs=5), VOCAB)
    token = sampler.sample(logits)
    expected = torch.log_softmax(logits, dim=-1)
    assert abs(token.logprob - float(expected[token.token_id])) < 1e-5
    values = [alt.logprob for alt in token.top]
    assert len(values) == 5 and values == sorted(values, reverse=True)
    assert token.top[0].token_id == token.token_id


def test_logprobs_reflect_logit_bias() -> None:
    sampler = SequenceSampler(
        SamplingParams(max_tokens=1, temperature=0.0, top_logprobs=0, logit_bias=((9, 100.0),)), VOCAB
    )
    token = sampler.sample(_logits())
    assert token.token_id == 9 and token.logprob > -1e-3 and token.top == ()
