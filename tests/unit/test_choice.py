"""The per-choice pipeline: engine outputs in, deltas out, and the choice's finish_reason decided
in one place (stop string, end-of-sequence token, token limit, deadline, calls)."""

from __future__ import annotations

import itertools

import pytest
from transformers import PreTrainedTokenizerBase

from server.chat.assembler import ChoiceAssembler
from server.chat.choice import ChoicePipeline
from server.chat.deltas import OutputDeltas, ParsedDeltas
from server.chat.detokenizer import IncrementalDecoder
from server.engine.types import FinishReason, SampledToken, StepOutput
from server.models.token_table import TokenTable
from server.parsers.hermes import HermesParser
from server.protocol.errors import InternalError, RateLimited


def pipeline(
    tokenizer: PreTrainedTokenizerBase, stop: list[str], output: OutputDeltas | None = None
) -> ChoicePipeline:
    decoder = IncrementalDecoder(tokenizer, frozenset())
    assembler = ChoiceAssembler(decoder, TokenTable(tokenizer, len(tokenizer)), stop, False)
    return ChoicePipeline(assembler, output or OutputDeltas())


def run(p: ChoicePipeline, ids: list[int], last: FinishReason | None) -> tuple[str, str | None, bool]:
    """Feeds `ids` (the last with `last` as the engine's reason): content, finish_reason, whether
    the pipeline asked the engine to stop."""
    text, reason, stop = "", None, False
    for i, token_id in enumerate(ids):
        step = p.step(StepOutput("r", SampledToken(token_id), last if i == len(ids) - 1 else None))
        text += "".join(d.content or "" for d in step.deltas)
        stop = stop or step.stop_generating
        if step.finish_reason is not None:
            reason = step.finish_reason
            break
    return text, reason, stop


def test_a_stop_string_ends_the_choice_and_stops_the_engine(tokenizer: PreTrainedTokenizerBase) -> None:
    p = pipeline(tokenizer, ["END"])
    ids = tokenizer("one two END three", add_special_tokens=False)["input_ids"]
    assert run(p, ids, None) == ("one two ", "stop", True)


def test_end_of_sequence_is_stop_and_its_token_counts(tokenizer: PreTrainedTokenizerBase) -> None:
    p = pipeline(tokenizer, [])
    ids = tokenizer("Hello there", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert run(p, ids, FinishReason.STOP) == ("Hello there", "stop", False)
    assert p.completion_tokens == len(ids)


@pytest.mark.parametrize("engine_reason", [FinishReason.LENGTH, FinishReason.TIMEOUT])
def test_the_token_limit_and_a_deadline_are_length(
    tokenizer: PreTrainedTokenizerBase, engine_reason: FinishReason
) -> None:
    p = pipeline(tokenizer, [])
    ids = tokenizer("Hello there", add_special_tokens=False)["input_ids"]
    step = None
    for i, token_id in enumerate(ids):
        step = p.step(StepOutput("r", SampledToken(token_id), engine_reason if i == len(ids) - 1 else None))
    assert step is not None and step.finish_reason == "length"
    assert step.ended_as == ("timeout" if engine_reason is FinishReason.TIMEOUT else "length")


def test_a_stop_after_calls_is_tool_calls(tokenizer: PreTrainedTokenizerBase) -> None:
    counter = itertools.count()
    output = ParsedDeltas(HermesParser(), False, lambda: f"call_{next(counter)}")
    p = pipeline(tokenizer, [], output)
    call = '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
    ids = tokenizer(call, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert run(p, ids, FinishReason.STOP)[1] == "tool_calls"


def test_outputs_that_end_the_request_raise(tokenizer: PreTrainedTokenizerBase) -> None:
    with pytest.raises(RateLimited):
        pipeline(tokenizer, []).step(StepOutput("r", None, FinishReason.QUEUE_TIMEOUT))
    with pytest.raises(InternalError):
        pipeline(tokenizer, []).step(StepOutput("r", None, FinishReason.ERROR, error="boom"))
