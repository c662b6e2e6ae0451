"""One choice's text -> wire deltas: content, or what the model's output format parser reads in it
(reasoning, tool calls)."""

from __future__ import annotations

import json
from collections.abc import Callable

from openai.types.chat.chat_completion_chunk import (
    ChoiceDelta,
    ChoiceDeltaFunctionCall,
    ChoiceDeltaToolCall,
    ChoiceDeltaToolCallFunction,
)

from server.parsers.events import ParseEvent, Reasoning, ToolCallArguments, ToolCallStart
from server.parsers.reasoning import OutputParser


class OutputDeltas:
    """Plain text: every text delta is content. Subclassed when a parser reads the output."""

    @property
    def in_reasoning(self) -> bool:
        """Whether the text so far ends inside the model's reasoning."""
        return False

    def feed(self, text: str) -> list[ChoiceDelta]:
        return [ChoiceDelta(content=text)] if text else []

    def finish(self, reason: str) -> list[ChoiceDelta]:
        """The output ended (`reason`: "stop" or "length"): what is left to send."""
        return []

    def finish_reason(self, reason: str) -> str:
        return reason


class ParsedDeltas(OutputDeltas):
    """A call is sent as its index, id, type and name first, then its argument fragments; the
    fragments of one call concatenate to its `arguments`. With the deprecated `functions`, the one
    call is sent as `function_call` instead.

    Whole (not streamed) answers are held to the end: a call the token limit cut short (its
    arguments are not JSON) is then no call but what the model wrote, as content, with
    finish_reason "length". A stream has sent the call's start already; its client sees
    finish_reason "length" after the partial arguments, as OpenAI's streams do."""

    def __init__(
        self,
        parser: OutputParser,
        legacy_functions: bool,
        new_call_id: Callable[[], str],
        streamed: bool = True,
    ) -> None:
        self._parser = parser
        self._legacy = legacy_functions
        self._new_call_id = new_call_id  # ids in the form the model's template takes back
        self._streamed = streamed
        self._held: list[ParseEvent] = []
        self._text: list[str] = []  # what the model wrote, for a call cut short

    @property
    def in_reasoning(self) -> bool:
        return self._parser.in_reasoning

    def feed(self, text: str) -> list[ChoiceDelta]:
        if not text:
            return []
        events = self._parser.feed(text)
        if self._streamed:
            return [self._delta(event) for event in events]
        self._held += events
        self._text.append(text)
        return []

    def finish(self, reason: str) -> list[ChoiceDelta]:
        events = self._parser.finish()
        if self._streamed:
            return [self._delta(event) for event in events]
        events, self._held = self._held + events, []
        if reason == "length" and _cut_call(events):
            return [ChoiceDelta(content="".join(self._text))]
        return [self._delta(event) for event in events]

    def finish_reason(self, reason: str) -> str:
        if reason == "stop" and self._parser.calls:
            return "function_call" if self._legacy else "tool_calls"
        return reason

    def _delta(self, event: ParseEvent) -> ChoiceDelta:
        if isinstance(event, str):
            return ChoiceDelta(content=event)
        if isinstance(event, Reasoning):
            # Both names: `reasoning` (vLLM, OpenRouter, gpt-oss guidance), `reasoning_content`
            # (DeepSeek, the Vercel AI SDK); no client reads both.
            return ChoiceDelta(reasoning=event.text, reasoning_content=event.text)  # type: ignore[call-arg]
        if isinstance(event, ToolCallStart):
            if self._legacy:
                return ChoiceDelta(function_call=ChoiceDeltaFunctionCall(name=event.name, arguments=""))
            function = ChoiceDeltaToolCallFunction(name=event.name, arguments="")
            call = ChoiceDeltaToolCall(
                index=event.index, id=self._new_call_id(), type="function", function=function
            )
            return ChoiceDelta(tool_calls=[call])
        assert isinstance(event, ToolCallArguments)
        if self._legacy:
            return ChoiceDelta(function_call=ChoiceDeltaFunctionCall(arguments=event.fragment))
        function = ChoiceDeltaToolCallFunction(arguments=event.fragment)
        return ChoiceDelta(tool_calls=[ChoiceDeltaToolCall(index=event.index, function=function)])


def _cut_call(events: list[ParseEvent]) -> bool:
    """Whether the last call's arguments are not (yet) a JSON object."""
    starts = [e.index for e in events if isinstance(e, ToolCallStart)]
    if not starts:
        return False
    arguments = "".join(
        e.fragment for e in events if isinstance(e, ToolCallArguments) and e.index == starts[-1]
    )
    try:
        return not isinstance(json.loads(arguments), dict)
    except json.JSONDecodeError:
        return True
