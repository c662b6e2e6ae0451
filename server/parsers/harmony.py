"""gpt-oss's harmony format: the output is a run of messages, each a header and a body.

<|channel|>analysis<|message|>The user wants the weather.<|end|>
<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>
{"city": "Paris"}<|call|>   (one line in the output)

or, answering, `<|channel|>final<|message|>It is sunny.<|return|>`. The analysis channel is the
model's reasoning, the final channel (and commentary addressed to no one) is content, a message to
`functions.NAME` is a call with the body as its JSON arguments. The recipient may also stand before
the channel (`<|start|>assistant to=functions.NAME<|channel|>commentary json<|message|>`). One call
ends the turn (`<|call|>` is an end-of-sequence token of gpt-oss).
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any

import regex

from server.constrained.json_schema import lark_json
from server.parsers.base import SpecialTokenLookup, SteppedParser, held_back, marker
from server.parsers.events import CallGrammar, ParseEvent, Reasoning, ToolCallArguments, ToolSpec

START, END, MESSAGE, CHANNEL = "<|start|>", "<|end|>", "<|message|>", "<|channel|>"
CONSTRAIN, CALL, RETURN = "<|constrain|>", "<|call|>", "<|return|>"
_BODY_ENDS = (END, CALL, RETURN)
_NEXT = START + "assistant"
_MAX_HEADER = 256  # characters: a longer "header" is not one
_CHANNEL = regex.compile(r"<\|channel\|>\s*(\w+)")
_RECIPIENT = regex.compile(r"to=([^\s<]+)")
_FUNCTIONS = "functions."


class _State(Enum):
    OPENING = "opening"  # the output's start: harmony, or plain text?
    HEADER = "header"
    BODY = "body"
    BETWEEN = "between"  # after a message's end: the next `<|start|>assistant`
    PLAIN = "plain"  # not (or no longer) in the format: the rest is content


class _Body(Enum):
    CONTENT = "content"
    REASONING = "reasoning"
    CALL = "call"


class HarmonyParser(SteppedParser):
    name = "harmony"
    template_markers = (CHANNEL,)
    syntax_markers = (START, END, MESSAGE, CHANNEL, CONSTRAIN, CALL, RETURN)
    call_instructions = (
        "Call a function by writing a message on the commentary channel addressed to it, its JSON "
        "arguments as the message:\n"
        f'{CHANNEL}commentary to=functions.<function-name> {CONSTRAIN}json{MESSAGE}{{"arg": "value"}}{CALL}'
    )

    def __init__(self, tools: tuple[ToolSpec, ...] = ()) -> None:
        super().__init__(tools)
        self._state = _State.OPENING
        self._body = _Body.CONTENT

    @property
    def in_reasoning(self) -> bool:
        return self._state is _State.BODY and self._body is _Body.REASONING

    def _rest(self) -> list[ParseEvent]:
        return [self._buf]  # an unfinished header, or a start of the format that never came

    def _step(self, out: list[ParseEvent], final: bool) -> bool:
        if self._state is _State.PLAIN:
            out.append(self._buf)
            self._buf = ""
            return False
        if self._state is _State.BODY:
            return self._read_body(out, final)
        if self._state is _State.HEADER:
            return self._read_header(out, final)
        # OPENING, BETWEEN: what must come next, or plain text.
        expected = (CHANNEL, "to=") if self._state is _State.OPENING else (_NEXT,)
        head = self._buf.lstrip()
        for opening in expected:
            if head.startswith(opening):
                self._buf = head[len(_NEXT) :] if opening == _NEXT else head
                self._state = _State.HEADER
                return True
        if not final and (not head or any(o.startswith(head) for o in expected)):
            return False  # may still grow into it
        self._state = _State.PLAIN
        return True

    def _read_header(self, out: list[ParseEvent], final: bool) -> bool:
        at = self._buf.find(MESSAGE)
        if at < 0:
            if final or len(self._buf) > _MAX_HEADER:
                self._state = _State.PLAIN
                return True
            return False
        header, self._buf = self._buf[:at], self._buf[at + len(MESSAGE) :]
        channel = _CHANNEL.search(header)
        recipient = _RECIPIENT.search(header)
        if recipient is not None and recipient.group(1).startswith(_FUNCTIONS):
            out.append(self._start_call(recipient.group(1)[len(_FUNCTIONS) :]))
            self._body = _Body.CALL
        elif channel is not None and channel.group(1) == "analysis":
            self._body = _Body.REASONING
        else:
            self._body = _Body.CONTENT
        self._state = _State.BODY
        return True

    def _read_body(self, out: list[ParseEvent], final: bool) -> bool:
        found = [(self._buf.find(m), m) for m in _BODY_ENDS if m in self._buf]
        if found:
            at, end = min(found)
            self._emit(out, self._buf[:at])
            self._buf = self._buf[at + len(end) :]
            self._state = _State.BETWEEN
            return True
        keep = 0 if final else held_back(self._buf, _BODY_ENDS)
        self._emit(out, self._buf[: len(self._buf) - keep])
        self._buf = self._buf[len(self._buf) - keep :]
        return False

    def _emit(self, out: list[ParseEvent], text: str) -> None:
        if not text:
            return
        if self._body is _Body.CALL:
            out.append(ToolCallArguments(self.calls - 1, text))
        elif self._body is _Body.REASONING:
            out.append(Reasoning(text))
        else:
            out.append(text)

    @classmethod
    def write_calls(cls, calls: list[tuple[str, Any]]) -> str:
        return "".join(
            f"{START}assistant to=functions.{name}{CHANNEL}commentary json{MESSAGE}"
            f"{json.dumps(arguments, ensure_ascii=False)}{CALL}"
            for name, arguments in calls
        )

    @classmethod
    def grammar(cls, spec: CallGrammar, special: SpecialTokenLookup) -> str:
        """One call (a harmony turn ends at its call); `<|call|>` is left to the end-of-sequence
        tokens. Without a required call, messages on any channel may come first, and the answer
        ends the output (with JSON on the final channel for a response_format)."""
        channel, message, constrain = (marker(m, special) for m in (CHANNEL, MESSAGE, CONSTRAIN))
        alternatives = " | ".join(f"call_{i}" for i in range(len(spec.tools)))
        rules = [f'call: {channel} "commentary to=functions." ({alternatives})', r"TEXT: /(.|\n)*/"]
        for i, tool in enumerate(spec.tools):
            arguments = lark_json(tool.parameters or {"type": "object"})
            rules.append(f'call_{i}: {json.dumps(tool.name + " ")} {constrain} "json" {message} {arguments}')
        if spec.required:
            rules.insert(0, "start: call")
        elif spec.text_grammar is not None:
            rules.insert(0, f'start: {channel} "final" {message} text | call\ntext: {spec.text_grammar}')
        elif special(CHANNEL) is not None:
            end, next_ = marker(END, special), marker(START, special)
            rules[:0] = [
                "start: free* (last | call)",
                f'free: {channel} name {message} TEXT {end} {next_} "assistant"',
                f"last: {channel} name {message} TEXT",
                'name: "analysis" | "final" | "commentary"',
            ]
        else:  # text markers: free text up to the call's opening, then the call is enforced
            rules[:0] = [
                f"start: TEXT | head ({alternatives})",
                f'head[lazy]: TEXT "{CHANNEL}commentary to=functions."',
            ]
        return "\n".join(rules)
