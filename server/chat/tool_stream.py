"""One choice's text deltas -> wire deltas: content, or tool calls once the parser sees them."""

from __future__ import annotations

from collections.abc import Callable

from openai.types.chat.chat_completion_chunk import (
    ChoiceDelta,
    ChoiceDeltaFunctionCall,
    ChoiceDeltaToolCall,
    ChoiceDeltaToolCallFunction,
)

from server.parsers.base import ToolCallParser
from server.parsers.events import ParseEvent, ToolCallArguments, ToolCallStart


class ChoiceDeltas:
    """Plain text: every text delta is content. Subclassed when a tool parser reads the output."""

    def feed(self, text: str) -> list[ChoiceDelta]:
        return [ChoiceDelta(content=text)] if text else []

    def finish(self) -> list[ChoiceDelta]:
        return []

    def finish_reason(self, reason: str) -> str:
        return reason


class ToolCallDeltas(ChoiceDeltas):
    """A call is sent as its index, id, type and name first, then its argument fragments; the
    fragments of one call concatenate to its `arguments`. With the deprecated `functions`, the one
    call is sent as `function_call` instead."""

    def __init__(
        self, parser: ToolCallParser, legacy_functions: bool, new_call_id: Callable[[], str]
    ) -> None:
        self._parser = parser
        self._legacy = legacy_functions
        self._new_call_id = new_call_id  # ids in the form the model's template takes back

    def feed(self, text: str) -> list[ChoiceDelta]:
        return [self._delta(event) for event in self._parser.feed(text)] if text else []

    def finish(self) -> list[ChoiceDelta]:
        return [self._delta(event) for event in self._parser.finish()]

    def finish_reason(self, reason: str) -> str:
        if reason == "stop" and self._parser.calls:
            return "function_call" if self._legacy else "tool_calls"
        return reason

    def _delta(self, event: ParseEvent) -> ChoiceDelta:
        if isinstance(event, str):
            return ChoiceDelta(content=event)
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
