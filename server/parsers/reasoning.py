"""Reasoning formats: how a model's thinking is told apart from its answer, in the output and in
the grammar of a constrained answer.

- `think`: `<think>…</think>` then the answer (Qwen3, SmolLM3, DeepSeek-R1 and its distills; the
  block may be opened by the template's generation prompt, then the output starts inside it).
- `granite`: the same, with the answer in `<response>…</response>` (Granite 3.2/3.3).
- `harmony`: gpt-oss's channels (analysis -> reasoning), read by the harmony parser, which also
  reads its calls.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import ClassVar, Literal, Protocol

from server.parsers.base import SpecialTokenLookup, TextStateMachine, held_back, marker
from server.parsers.events import ParseEvent, Reasoning, ToolSpec
from server.parsers.harmony import CHANNEL, END, MESSAGE, START, HarmonyParser

ReasoningFormatName = Literal["think", "granite", "harmony"]
OPEN, CLOSE = "<think>", "</think>"


class OutputParser(Protocol):
    """What reads a choice's text: content, reasoning and tool-call events."""

    @property
    def calls(self) -> int: ...

    @property
    def in_reasoning(self) -> bool: ...

    def feed(self, text: str) -> list[ParseEvent]: ...

    def finish(self) -> list[ParseEvent]: ...


class _Where(Enum):
    START = "start"  # nothing but blank space yet: a think block may open
    THINKING = "thinking"
    ANSWER = "answer"


class ThinkParser(TextStateMachine):
    """`<think>` reasoning `</think>` answer; the answer goes on to `inner` (the tool parser) when
    there is one. Only a block at the very start is reasoning; text before it makes it all answer."""

    name = "think"
    syntax_markers: ClassVar[tuple[str, ...]] = (OPEN, CLOSE)
    answer_tags: ClassVar[tuple[str, str] | None] = None  # Granite wraps the answer

    def __init__(self, inside: bool = False, inner: OutputParser | None = None) -> None:
        super().__init__()
        self._where = _Where.THINKING if inside else _Where.START
        self._inner = inner
        self._answer_started = False

    @property
    def calls(self) -> int:
        return self._inner.calls if self._inner is not None else 0

    @property
    def in_reasoning(self) -> bool:
        return self._where is _Where.THINKING

    def _step(self, out: list[ParseEvent], final: bool) -> bool:
        if self._where is _Where.START:
            head = self._buf.lstrip()
            if head.startswith(OPEN):
                self._buf, self._where = head[len(OPEN) :], _Where.THINKING
                return True
            if not final and (not head or OPEN.startswith(head)):
                return False
            self._where = _Where.ANSWER
            return True
        if self._where is _Where.THINKING:
            at = self._buf.find(CLOSE)
            if at >= 0:
                out.append(Reasoning(self._buf[:at]))
                self._buf, self._where = self._buf[at + len(CLOSE) :], _Where.ANSWER
                return True
            keep = 0 if final else held_back(self._buf, (CLOSE,))
            out.append(Reasoning(self._buf[: len(self._buf) - keep]))
            self._buf = self._buf[len(self._buf) - keep :]
            return False
        return self._answer(out, final)

    def _answer(self, out: list[ParseEvent], final: bool) -> bool:
        text = self._buf
        if not self._answer_started:  # the blank line(s) between the block and the answer
            text = text.lstrip()
            if not text and not final:
                self._buf = ""
                return False
            self._answer_started = True
        keep = 0 if final else held_back(text, self.answer_tags or ())
        text, self._buf = text[: len(text) - keep], text[len(text) - keep :]
        if self.answer_tags is not None:
            for tag in self.answer_tags:
                text = text.replace(tag, "")
        out += self._inner.feed(text) if self._inner is not None and text else ([text] if text else [])
        return False

    def _rest(self) -> list[ParseEvent]:
        out: list[ParseEvent] = []
        if self._where is _Where.THINKING:
            out.append(Reasoning(self._buf))  # the output ended inside the think block
        elif self._buf:
            self._answer(out, final=True)
        if self._inner is not None:
            out += self._inner.finish()
        return out


class GraniteParser(ThinkParser):
    name = "granite"
    answer_tags = ("<response>", "</response>")
    syntax_markers = (*ThinkParser.syntax_markers, *answer_tags)


def think_prefix(special: SpecialTokenLookup, inside: bool) -> str:
    """Lark rules: `reasoning`, free text up to the end of the think block and the few blank
    characters models write after it; opened by the prompt (`inside`) or, optionally, the model."""
    close = marker(CLOSE, special)
    body = (
        f"reasoning_body: TEXT_R {close}"
        if special(CLOSE) is not None
        else f"reasoning_body[lazy]: TEXT_R {close}"
    )
    rules = [body, r"TEXT_R: /(.|\n)*/", r"GAP: /[ \t\n]{0,4}/"]
    if inside:
        return "\n".join(["reasoning: reasoning_body GAP", *rules])
    return "\n".join([f"reasoning: ({marker(OPEN, special)} reasoning_body GAP)?", *rules])


def harmony_prefix(special: SpecialTokenLookup) -> str:
    """Lark rules: `reasoning`, an optional analysis message before the answer's message."""
    channel, message, end, start = (marker(m, special) for m in (CHANNEL, MESSAGE, END, START))
    text = r"TEXT_R: /(.|\n)*/"
    if special(END) is not None:
        body = f'reasoning_body: TEXT_R {end} {start} "assistant"'
    else:
        body = f"reasoning_body[lazy]: TEXT_R {json.dumps(END + START + 'assistant')}"
    return "\n".join([f'reasoning: ({channel} "analysis" {message} reasoning_body)?', body, text])


def harmony_final(special: SpecialTokenLookup) -> str:
    """Lark for the opening of harmony's final channel (where a constrained answer goes)."""
    return f'{marker(CHANNEL, special)} "final" {marker(MESSAGE, special)}'


def reasoning_parser(
    name: ReasoningFormatName, inside: bool, tools: tuple[ToolSpec, ...], inner: OutputParser | None
) -> OutputParser:
    """The parser of a choice's output for a reasoning model; `inner` reads the answer (calls)."""
    if name == "harmony":
        return HarmonyParser(tools)  # its channels hold the calls too
    return (GraniteParser if name == "granite" else ThinkParser)(inside, inner)


def reasoning_format_for_template(template: str) -> ReasoningFormatName | None:
    if CHANNEL in template:
        return "harmony"
    if OPEN in template or CLOSE in template:
        return "granite" if "<response>" in template else "think"
    return None


SYNTAX_MARKERS: dict[ReasoningFormatName, tuple[str, ...]] = {
    "think": ThinkParser.syntax_markers,
    "granite": GraniteParser.syntax_markers,
    "harmony": HarmonyParser.syntax_markers,
}
