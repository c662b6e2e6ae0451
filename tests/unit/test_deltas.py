"""A choice's text -> wire deltas with a tool parser, and the message they fold into."""

from __future__ import annotations

import itertools

from openai.types.chat.chat_completion import Choice as CompletionChoice
from openai.types.chat.chat_completion_chunk import ChatCompletionChunk, Choice

from server.chat.aggregate import fold_all
from server.chat.deltas import ParsedDeltas
from server.parsers.harmony import HarmonyParser
from server.parsers.hermes import HermesParser

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
CUT = CALL[: CALL.index("Paris") + 2]  # the call has begun: its name is known


def message_of(deltas: ParsedDeltas, pieces: list[str], reason: str) -> CompletionChoice:
    out = [d for piece in pieces for d in deltas.feed(piece)] + deltas.finish(reason)
    chunks = [
        ChatCompletionChunk(
            id="c",
            object="chat.completion.chunk",
            created=0,
            model="m",
            choices=[Choice(index=0, delta=d, finish_reason=None)],
        )
        for d in out
    ]
    last = Choice(index=0, delta={}, finish_reason=deltas.finish_reason(reason))  # type: ignore[arg-type]
    chunks.append(
        ChatCompletionChunk(id="c", object="chat.completion.chunk", created=0, model="m", choices=[last])
    )
    return fold_all(chunks).choices[0]


def new_ids() -> object:
    counter = itertools.count()
    return lambda: f"call_{next(counter)}"


def test_a_call_cut_by_the_token_limit_is_text_in_a_whole_answer() -> None:
    choice = message_of(
        ParsedDeltas(HermesParser(), False, new_ids(), streamed=False), [CUT[:20], CUT[20:]], "length"
    )
    assert choice.finish_reason == "length"
    assert choice.message.tool_calls is None and choice.message.content == CUT


def test_a_stream_sends_a_cut_call_as_it_came_with_finish_reason_length() -> None:
    choice = message_of(ParsedDeltas(HermesParser(), False, new_ids()), [CUT], "length")
    assert choice.finish_reason == "length"
    assert choice.message.tool_calls[0].function.name == "get_weather"


def test_a_whole_call_is_a_call_even_when_the_limit_came_right_after_it() -> None:
    choice = message_of(ParsedDeltas(HermesParser(), False, new_ids(), streamed=False), [CALL[:-3]], "length")
    assert choice.message.tool_calls[0].function.arguments == '{"city": "Paris"}'


def test_harmony_analysis_is_the_message_reasoning_under_both_names() -> None:
    output = (
        "<|channel|>analysis<|message|>They ask about Paris.<|end|><|start|>assistant"
        '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}'
    )
    for streamed in (True, False):
        choice = message_of(ParsedDeltas(HarmonyParser(), False, new_ids(), streamed), list(output), "stop")
        assert choice.finish_reason == "tool_calls"
        assert choice.message.reasoning == choice.message.reasoning_content == "They ask about Paris."  # type: ignore[attr-defined]
        assert choice.message.content is None
        assert choice.message.tool_calls[0].function.arguments == '{"city": "Paris"}'
