"""Speculative decoding: proposed tokens (a request's prediction, prompt lookup) verified in one
step change nothing in the output. On tiny random int4 models (whose kernels give a row the same
result whatever the batch) every token and logprob is the same with and without proposals: greedy
and seeded sampling, with stop tokens, max_tokens, logprobs, a grammar-like mask, n=2 and other
requests beside; and the proposers' alignment and adaptation on their own."""

from __future__ import annotations

import threading
from collections.abc import Sequence as Seq
from dataclasses import replace

import pytest
import torch

from server.engine.engine import Engine
from server.engine.model_runner import ModelRunner
from server.engine.sampler import SequenceSampler
from server.engine.scheduler import Chunk, StepPlan
from server.engine.sequence import Sequence
from server.engine.speculation import Budget, NgramProposer, PredictionProposer
from server.engine.types import EngineConfig, EngineRequest, SamplingParams, StepOutput
from tests.unit.test_batch_invariance import SIZES
from tests.unit.test_model_families import VOCAB, build

GREEDY = SamplingParams(max_tokens=40, temperature=0.0)
CONFIG = EngineConfig(
    max_running=4, max_kv_tokens=4 * 256, max_batch_tokens=64, min_capacity=64, context_length=256
)


@pytest.fixture(scope="module", params=["LlamaConfig", "MistralConfig"])  # lean forward; model's own
def engine(request: pytest.FixtureRequest) -> Engine:
    model = build(request.param, **SIZES)
    engine = Engine(lambda: (ModelRunner(model, quantization="int4"), CONFIG))
    engine.start()
    yield engine
    engine.stop()


def prompt(seed: int, length: int = 30) -> list[int]:
    return torch.randint(3, VOCAB, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def generate(engine: Engine, requests: Seq[EngineRequest]) -> list[list[StepOutput]]:
    """Submits the requests together; every output of each, in order."""
    outputs: dict[str, list[StepOutput]] = {r.request_id: [] for r in requests}
    done = threading.Event()
    lock = threading.Lock()

    def sink(out: StepOutput) -> None:
        with lock:
            outputs[out.request_id].append(out)
            if all(o and o[-1].finish_reason is not None for o in outputs.values()):
                done.set()

    engine.submit(list(requests), sink)
    assert done.wait(120)
    return [outputs[r.request_id] for r in requests]


_ids = iter(range(10**9))


def request(
    tokens: list[int], params: SamplingParams = GREEDY, prediction: Seq[int] | None = None, **kw: object
) -> EngineRequest:
    return EngineRequest(
        f"r{next(_ids)}", tokens, params, prediction=None if prediction is None else tuple(prediction), **kw
    )  # type: ignore[arg-type]


def tokens_of(outputs: list[StepOutput]) -> list[int]:
    return [o.token.token_id for o in outputs if o.token is not None]


def logprobs_of(outputs: list[StepOutput]) -> list[tuple]:
    return [(o.token.logprob, o.token.top) for o in outputs if o.token is not None]


def accepted(outputs: list[StepOutput]) -> tuple[int, int]:
    return sum(o.accepted_prediction for o in outputs), sum(o.rejected_prediction for o in outputs)


def test_a_correct_prediction_is_accepted_and_changes_nothing(engine: Engine) -> None:
    (plain,) = generate(engine, [request(prompt(1))])
    expected = tokens_of(plain)
    assert len(expected) == GREEDY.max_tokens
    (predicted,) = generate(engine, [request(prompt(1), prediction=expected)])
    assert tokens_of(predicted) == expected
    kept, rejected = accepted(predicted)
    # Every token but the ones sampled after a verified run (at least the first) came from it.
    assert kept >= len(expected) // 2 and rejected == 0
    assert predicted[-1].finish_reason == plain[-1].finish_reason


def test_a_prediction_that_diverges_and_reconverges_changes_nothing(engine: Engine) -> None:
    (plain,) = generate(engine, [request(prompt(2))])
    expected = tokens_of(plain)
    edited = [*expected[:12], 5, 6, 7, 8, *expected[15:]]  # three tokens replaced by four
    (predicted,) = generate(engine, [request(prompt(2), prediction=edited)])
    assert tokens_of(predicted) == expected
    kept, rejected = accepted(predicted)
    assert rejected >= 1
    assert kept > 20  # it re-joined the prediction after the edit


def test_a_wrong_prediction_changes_nothing_and_stops_being_proposed(engine: Engine) -> None:
    (plain,) = generate(engine, [request(prompt(3))])
    wrong = prompt(99, 60)
    (predicted,) = generate(engine, [request(prompt(3), prediction=wrong)])
    assert tokens_of(predicted) == tokens_of(plain)
    assert accepted(predicted)[1] <= 16  # the first proposal (at most prediction_tokens), then it is lost


def test_logprobs_stop_tokens_and_max_tokens_are_the_same(engine: Engine) -> None:
    params = replace(GREEDY, top_logprobs=3)
    (plain,) = generate(engine, [request(prompt(4), params)])
    expected = tokens_of(plain)
    (predicted,) = generate(engine, [request(prompt(4), params, prediction=expected)])
    assert logprobs_of(predicted) == logprobs_of(plain)
    # A stop token in the middle of a run of accepted proposals ends the output there.
    stop = expected[17]
    first = expected.index(stop)
    stopping = replace(GREEDY, stop_token_ids=frozenset({stop}))
    (stopped,) = generate(engine, [request(prompt(4), stopping, prediction=expected)])
    assert tokens_of(stopped) == expected[: first + 1]
    assert stopped[-1].finish_reason.value == "stop"
    short = replace(GREEDY, max_tokens=9)
    (limited,) = generate(engine, [request(prompt(4), short, prediction=expected)])
    assert tokens_of(limited) == expected[:9]
    assert limited[-1].finish_reason.value == "length"


def test_a_mask_rejects_proposals_it_forbids(engine: Engine) -> None:
    """A grammar-like mask (here: only even token ids) applies to every verified row."""
    even = torch.zeros(VOCAB, dtype=torch.bool)
    even[::2] = True
    (plain,) = generate(engine, [request(prompt(5), mask_fn=lambda generated: even)])
    expected = tokens_of(plain)
    assert all(t % 2 == 0 for t in expected)
    prediction = [t + 1 if i % 5 == 4 else t for i, t in enumerate(expected)]  # some odd ones
    (predicted,) = generate(engine, [request(prompt(5), prediction=prediction, mask_fn=lambda g: even)])
    assert tokens_of(predicted) == expected
    assert accepted(predicted)[1] >= 1


def test_seeded_sampling_gives_the_same_tokens_with_proposals(engine: Engine) -> None:
    params = SamplingParams(max_tokens=40, temperature=0.8, top_p=0.9, seed=11)
    (plain,) = generate(engine, [request(prompt(6), params)])
    expected = tokens_of(plain)
    (predicted,) = generate(engine, [request(prompt(6), params, prediction=expected)])
    assert tokens_of(predicted) == expected
    assert accepted(predicted)[0] > 0


def test_n2_and_other_requests_beside_change_nothing(engine: Engine) -> None:
    alone = [tokens_of(o) for o in generate(engine, [request(prompt(s)) for s in (7, 8, 9)])]
    # Choice 1 and 2 of one request share the prediction; a third request has none.
    both = [request(prompt(7), prediction=alone[0]), request(prompt(7), prediction=alone[0])]
    outputs = generate(engine, [*both, request(prompt(8)), request(prompt(9), prediction=alone[2][:10])])
    assert [tokens_of(o) for o in outputs] == [alone[0], alone[0], alone[1], alone[2]]


def test_prompt_lookup_changes_nothing_and_is_used(engine: Engine) -> None:
    repeated = prompt(10, 20) * 3  # a prompt that repeats itself: lookup has something to find
    (plain,) = generate(engine, [request(repeated)])
    proposed, accepted_before = engine._proposed, engine._accepted
    engine.config = replace(engine.config, speculation="ngram")
    try:
        (looked_up,) = generate(engine, [request(repeated)])
    finally:
        engine.config = replace(engine.config, speculation=None)
    assert tokens_of(looked_up) == tokens_of(plain)
    assert engine._proposed > proposed
    assert engine._accepted >= accepted_before


def test_verification_samples_the_distribution_of_the_row() -> None:
    """A proposal x is kept with probability p(x), and the token emitted at that position follows p
    whatever was proposed: many seeded draws, checked within five standard errors."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    p = torch.softmax(logits, dim=0)
    draws = 4000
    counts = torch.zeros(len(p))
    kept = 0
    for seed in range(draws):
        sampler = SequenceSampler(SamplingParams(max_tokens=4, temperature=1.0, seed=seed), len(p))
        rows = torch.stack([logits, logits])
        out = sampler.verify(rows, [1])
        counts[out[0].token_id] += 1
        kept += out[0].token_id == 1
    frequency = counts / draws
    error = (p * (1 - p) / draws).sqrt()
    assert ((frequency - p).abs() <= 5 * error + 1e-9).all(), (frequency, p)
    assert abs(kept / draws - p[1].item()) <= 5 * error[1].item()


# --- the proposers on their own -----------------------------------------------------------------


def test_prediction_proposer_follows_realigns_and_gets_lost() -> None:
    prediction = list(range(100, 140))
    proposer = PredictionProposer(prediction, Budget(4))
    prompt_tokens = [1, 2, 3]
    assert proposer.propose(prompt_tokens, 3, 10) == [100, 101, 102, 103]
    output = [100, 101, 102]
    assert proposer.propose(prompt_tokens + output, 3, 10) == [103, 104, 105, 106]
    output += [7]  # diverges: lost until the output meets the prediction again
    assert proposer.propose(prompt_tokens + output, 3, 10) == []
    output += [110, 111]  # "7 110 111", "110 111": nowhere in the prediction
    assert proposer.propose(prompt_tokens + output, 3, 10) == []
    output += [112]  # three tokens found again: aligned after them, proposals short at first
    assert proposer.propose(prompt_tokens + output, 3, 10) == [113, 114]
    proposer.record(2, 2)
    assert proposer.propose(prompt_tokens + output + [113, 114, 115], 3, 10) == [116, 117, 118, 119]
    assert proposer.propose(prompt_tokens + output + [113, 114, 115], 3, 2) == [116, 117]  # the limit


def test_budget_grows_with_acceptance_shrinks_and_pauses_on_failure() -> None:
    budget = Budget(8)
    assert budget.allowed() == 8
    budget.record(8, 2)
    assert budget.allowed() == 3
    budget.record(3, 3)
    assert budget.allowed() == 6
    budget.record(6, 0)
    budget.record(1, 0)  # two failures in a row: a pause
    assert budget.allowed() == 0
    assert budget.allowed() == 1


def test_ngram_proposer_continues_the_latest_earlier_occurrence() -> None:
    proposer = NgramProposer(Budget(3))
    tokens = [5, 6, 7, 8, 9, 1, 5, 6, 7, 2, 3, 6, 7]
    # "6 7" last occurred at 7..8 (followed by 2 3 6): the latest earlier one, not the current.
    assert proposer.propose(tokens, 4, 10) == [2, 3, 6]
    assert proposer.propose([*tokens, 2, 3, 4], 4, 10) == []  # "2 3 4" / "3 4": nowhere before


def test_float32_model_proposals_attend_alone_and_keep_greedy_tokens() -> None:
    """Unquantized, decode rows share one padded attention call; a step with proposals has every
    row attend alone instead (its rows share a slot), and greedy tokens stay the same."""
    model = build("LlamaConfig", **SIZES)
    float_engine = Engine(lambda: (ModelRunner(model), CONFIG))
    float_engine.start()
    try:
        assert not float_engine.runner.decode_rows_alone
        plain = [tokens_of(o) for o in generate(float_engine, [request(prompt(s)) for s in (12, 13)])]
        outputs = generate(float_engine, [request(prompt(12), prediction=plain[0]), request(prompt(13))])
        assert [tokens_of(o) for o in outputs] == plain
        assert accepted(outputs[0])[0] > 0
    finally:
        float_engine.stop()


def test_only_a_step_with_proposals_makes_unquantized_decode_rows_attend_alone() -> None:
    runner = ModelRunner(build("LlamaConfig", **SIZES))
    assert not runner.decode_rows_alone
    layouts = []
    original = runner._layout

    def spy(*args: object, **kwargs: object) -> object:
        layout = original(*args, **kwargs)  # type: ignore[arg-type]
        layouts.append(layout)
        return layout

    runner._layout = spy  # type: ignore[method-assign]
    decoding = Sequence("d", prompt(20, 10), 10, GREEDY)
    reading = Sequence("p", prompt(21, 10), 10, GREEDY)
    decoding.slot, reading.slot = 0, 1
    runner.run(StepPlan(2, 64, prefills=[Chunk(decoding, 0, 9)]))
    # A decode beside a prompt chunk, no proposals: the padded call, as before.
    runner.run(StepPlan(2, 64, decodes=[Chunk(decoding, 9, 1)], prefills=[Chunk(reading, 0, 10)]))
    assert layouts[-1].decode_rows_alone is None
    decoding.token_ids += [5, 6]
    runner.run(StepPlan(2, 64, decodes=[Chunk(decoding, 10, 1, draft=[7])]))
    assert layouts[-1].decode_rows_alone == [(0, 11), (0, 12)]
