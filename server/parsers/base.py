"""The parser interface, and the incremental machinery shared by the JSON-envelope formats."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from enum import Enum
from typing import Any, ClassVar, Literal

import regex

from server.constrained.json_schema import lark_json
from server.parsers.events import (
    CallGrammar,
    ParseEvent,
    Reasoning,
    ToolCallArguments,
    ToolCallStart,
    ToolSpec,
)

# Given a marker such as "<tool_call>": its token id when it is one special token of the vocabulary.
SpecialTokenLookup = Callable[[str], int | None]

JSON_STRING = r'"(?:[^"\\]|\\.)*"'


class ToolCallParser(ABC):
    """Model text in, content and tool-call events out; fed incrementally (streams) or whole."""

    name: ClassVar[str]
    # Substrings of a chat template that show the model was trained on this format.
    template_markers: ClassVar[tuple[str, ...]] = ()
    # What the parser reads that a vocabulary may hold as one special token: those tokens are
    # decoded as their text for it (special tokens are otherwise left out of the output).
    syntax_markers: ClassVar[tuple[str, ...]] = ()
    # For templates that cannot show tools: how our tool prompt tells the model to write calls.
    call_instructions: ClassVar[str] = (
        "For each function call, return a JSON object with the function name and its arguments within "
        "<tool_call></tool_call> XML tags, like this:\n"
        '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    )

    def __init__(self, tools: tuple[ToolSpec, ...] = ()) -> None:
        self.tools = {tool.name: tool for tool in tools}  # for formats whose values are untyped text
        self.calls = 0

    @property
    def in_reasoning(self) -> bool:
        """Whether the text read so far ends inside the model's reasoning (harmony's analysis)."""
        return False

    @abstractmethod
    def feed(self, text: str) -> list[ParseEvent]: ...

    @abstractmethod
    def finish(self) -> list[ParseEvent]:
        """End of output: flushes held-back text; an unfinished call header becomes text."""

    @classmethod
    @abstractmethod
    def grammar(cls, spec: CallGrammar, special: SpecialTokenLookup) -> str:
        """The Lark grammar (llguidance dialect) that only lets the model write valid calls."""

    @classmethod
    def write_calls(cls, calls: list[tuple[str, Any]]) -> str:
        """Calls (name, arguments object) as the model writes them: for a history turn whose
        template cannot render `tool_calls`. Hermes style unless the format says otherwise."""
        return "\n".join(
            "<tool_call>\n"
            + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
            + "\n</tool_call>"
            for name, arguments in calls
        )

    @classmethod
    def write_result(cls, content: str) -> str:
        """A tool's result as a user turn, for templates that have no tool role."""
        return f"<tool_response>\n{content}\n</tool_response>"

    @classmethod
    def parse(cls, text: str, tools: tuple[ToolSpec, ...] = ()) -> list[ParseEvent]:
        parser = cls(tools)
        return merge(parser.feed(text) + parser.finish())

    def _start_call(self, name: str) -> ToolCallStart:
        event = ToolCallStart(self.calls, name)
        self.calls += 1
        return event


def merge(events: list[ParseEvent]) -> list[ParseEvent]:
    """Adjacent text events, and adjacent argument fragments of one call, joined."""
    out: list[ParseEvent] = []
    for event in events:
        last = out[-1] if out else None
        if isinstance(event, str) and isinstance(last, str):
            out[-1] = last + event
        elif isinstance(event, ToolCallArguments) and isinstance(last, ToolCallArguments):
            out[-1] = ToolCallArguments(event.index, last.fragment + event.fragment)
        elif isinstance(event, Reasoning) and isinstance(last, Reasoning):
            out[-1] = Reasoning(last.text + event.text)
        elif event != "" and event != Reasoning(""):
            out.append(event)
    return out


def call_schema(tool: ToolSpec, arguments_key: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, arguments_key: tool.parameters or {"type": "object"}},
        "required": ["name", arguments_key],
        "additionalProperties": False,
    }


def calls_json(spec: CallGrammar, arguments_key: str) -> str:
    """Lark: one `{"name": ..., "<arguments_key>": {...}}` object naming one of the tools."""
    schemas = [call_schema(tool, arguments_key) for tool in spec.tools]
    return lark_json(schemas[0] if len(schemas) == 1 else {"anyOf": schemas})


def start_rule(spec: CallGrammar, open_is_special: bool, open_: str, after_open: str) -> str:
    """The grammar's start: only calls (`required`), a JSON answer or calls (a response_format), or
    free text that may end in calls. With a text marker, text runs lazily up to the marker and the
    calls are enforced after it (`after_open`: the calls without their opening marker)."""
    if spec.required:
        return "start: calls"
    if spec.text_grammar is not None:
        return f"start: text | calls\ntext: {spec.text_grammar}"
    if open_is_special:
        return "start: TEXT | TEXT calls"
    return f"start: TEXT | head {after_open}\nhead[lazy]: TEXT {open_}"


def marker(text: str, special: SpecialTokenLookup) -> str:
    """Lark for a marker: the special token where the vocabulary has one, else the literal text."""
    token_id = special(text)
    return f"<[{token_id}]>" if token_id is not None else json.dumps(text)


class TextStateMachine(ABC):
    """A state machine over a buffer of text arriving piece by piece: each step consumes what it
    can of the buffer."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._buf = ""

    @abstractmethod
    def _step(self, out: list[ParseEvent], final: bool) -> bool:
        """Consumes from the buffer into `out`; True while another step can go on."""

    @abstractmethod
    def _rest(self) -> list[ParseEvent]:
        """At the end of the output: what the steps left in the buffer, as events."""

    def feed(self, text: str) -> list[ParseEvent]:
        self._buf += text
        out: list[ParseEvent] = []
        while self._step(out, final=False):
            pass
        return merge(out)

    def finish(self) -> list[ParseEvent]:
        out: list[ParseEvent] = []
        while self._buf and self._step(out, final=True):
            pass
        out += self._rest()
        self._buf = ""
        return merge(out)


class SteppedParser(TextStateMachine, ToolCallParser):
    """A tool-call parser that is a TextStateMachine."""


class _State(Enum):
    TEXT = "text"
    LIST_OPEN = "list_open"
    HEADER = "header"
    ARGUMENTS = "arguments"
    AFTER_CALL = "after_call"
    BETWEEN = "between"


class _ObjectEnd:
    """Finds where a JSON object ends in text arriving piece by piece (strings and escapes aware)."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False

    def scan(self, text: str) -> int | None:
        for i, ch in enumerate(text):
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth == 0:
                    return i + 1
        return None


def _match(pattern: regex.Pattern[str], text: str, final: bool) -> regex.Match[str] | Literal[True] | None:
    """A full match, True when `text` may still grow into one, or None when it cannot."""
    found = pattern.match(text, partial=not final)
    if found is None:
        return None
    return True if found.partial else found


class JsonEnvelopeParser(SteppedParser):
    """Formats whose calls are `{"name": ..., "<args key>": {...}}` objects inside markers.

    A subclass sets the markers and patterns. Once a call's header (up to its name) is read, the
    call is committed: its name is sent, then its arguments as they arrive. A header that cannot be
    completed is returned as text, marker included.
    """

    open_markers: ClassVar[tuple[str, ...]] = ()
    bare_start: ClassVar[bool] = False  # a call may open with `{` at the very start of the output
    list_open: ClassVar[regex.Pattern[str] | None] = None
    header: ClassVar[regex.Pattern[str]]  # must end with the arguments' opening `{`
    call_close: ClassVar[regex.Pattern[str]]
    next_call: ClassVar[regex.Pattern[str] | None] = None
    list_close: ClassVar[regex.Pattern[str] | None] = None
    name_is_json: ClassVar[bool] = True  # the header's name group is a JSON string (else bare)

    def __init__(self, tools: tuple[ToolSpec, ...] = ()) -> None:
        super().__init__(tools)
        self._state = _State.TEXT
        self._raw = ""  # envelope text read since the marker, given back as text if it goes wrong
        self._object: _ObjectEnd | None = None
        self._content_seen = False
        self._bare_tried = False
        self._gap = False  # a call just ended: blank space before the next marker is envelope

    def _rest(self) -> list[ParseEvent]:
        rest = self._buf
        if self._state in (_State.LIST_OPEN, _State.HEADER):
            rest = self._raw + self._buf
        elif self._state is not _State.TEXT:
            rest = ""
        self._raw, self._state = "", _State.TEXT
        return [rest]

    def _step(self, out: list[ParseEvent], final: bool) -> bool:
        handler = {
            _State.TEXT: self._text,
            _State.LIST_OPEN: self._list_open,
            _State.HEADER: self._header,
            _State.ARGUMENTS: self._arguments,
            _State.AFTER_CALL: self._after_call,
            _State.BETWEEN: self._between,
        }[self._state]
        return handler(out, final)

    def _emit_text(self, out: list[ParseEvent], text: str) -> None:
        if text:
            out.append(text)
            self._content_seen = self._content_seen or bool(text.strip())

    def _text(self, out: list[ParseEvent], final: bool) -> bool:
        buf = self._buf
        if self._gap:
            stripped = buf.lstrip()
            if not stripped:
                if final:
                    self._buf = ""
                return False
            if any(stripped.startswith(m) or m.startswith(stripped) for m in self.open_markers):
                buf = self._buf = stripped
            self._gap = False
        if self.bare_start and not self._content_seen and not self._bare_tried:
            stripped = buf.lstrip()
            if stripped.startswith("{"):
                self._buf, self._raw, self._state = stripped, buf[: len(buf) - len(stripped)], _State.HEADER
                self._bare_tried = True
                return True
            if not stripped and not final:
                return False  # only whitespace so far: a call may still open
        found = [(buf.find(m), m) for m in self.open_markers if m in buf]
        if found:
            at, hit = min(found)
            self._emit_text(out, buf[:at])
            self._buf, self._raw = buf[at + len(hit) :], hit
            self._state = _State.LIST_OPEN if self.list_open is not None else _State.HEADER
            return True
        keep = 0 if final else held_back(buf, self.open_markers)
        self._emit_text(out, buf[: len(buf) - keep])
        self._buf = buf[len(buf) - keep :]
        return False

    def _fail(self, out: list[ParseEvent]) -> bool:
        """The envelope went wrong: what was read of it is text."""
        self._emit_text(out, self._raw)
        self._raw, self._state = "", _State.TEXT
        return True

    def _list_open(self, out: list[ParseEvent], final: bool) -> bool:
        assert self.list_open is not None
        found = _match(self.list_open, self._buf, final)
        if found is True:
            return False
        if found is None:
            return self._fail(out)
        self._raw += found.group(0)
        self._buf, self._state = self._buf[found.end() :], _State.HEADER
        return True

    def _header(self, out: list[ParseEvent], final: bool) -> bool:
        found = _match(self.header, self._buf, final)
        if found is True:
            return False
        if found is None:
            return self._fail(out)
        try:
            name = json.loads(found.group("name")) if self.name_is_json else found.group("name")
        except json.JSONDecodeError:
            return self._fail(out)
        out.append(self._start_call(name))
        self._buf = "{" + self._buf[found.end() :]
        self._raw, self._object, self._state = "", _ObjectEnd(), _State.ARGUMENTS
        return True

    def _arguments(self, out: list[ParseEvent], final: bool) -> bool:
        assert self._object is not None
        end = self._object.scan(self._buf)
        piece = self._buf if end is None else self._buf[:end]
        if piece:
            out.append(ToolCallArguments(self.calls - 1, piece))
        self._buf = "" if end is None else self._buf[end:]
        if end is None:
            return False
        self._state = _State.AFTER_CALL
        return True

    def _after_call(self, out: list[ParseEvent], final: bool) -> bool:
        found = _match(self.call_close, self._buf, final)
        if found is True:
            return False
        if found is None:
            if final and self.call_close.match(self._buf, partial=True):
                self._buf = ""  # a closing marker cut short by the token limit
                return False
            self._state = _State.TEXT
            return True
        self._buf = self._buf[found.end() :]
        self._state = _State.BETWEEN if self.next_call is not None else _State.TEXT
        self._gap = self._state is _State.TEXT
        return True

    def _between(self, out: list[ParseEvent], final: bool) -> bool:
        for pattern, state in ((self.next_call, _State.HEADER), (self.list_close, _State.TEXT)):
            if pattern is None:
                continue
            found = _match(pattern, self._buf, final)
            if found is True:
                return False
            if found is not None:
                self._raw = found.group(0) if state is _State.HEADER else ""
                self._buf, self._state = self._buf[found.end() :], state
                self._gap = state is _State.TEXT
                return True
        self._state, self._gap = _State.TEXT, True
        return True


def held_back(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that could begin a marker."""
    longest = 0
    for m in markers:
        for n in range(min(len(m) - 1, len(text)), longest, -1):
            if text.endswith(m[:n]):
                longest = n
                break
    return longest


class BlockParser(SteppedParser):
    """Formats whose calls are whole blocks between two text markers (Gemma's ```tool_code fences,
    Qwen3-Coder's XML calls), read once the block has closed: a block cut short, or one that does
    not parse, is text. Blank space between blocks is not content."""

    open_marker: ClassVar[str]
    close_marker: ClassVar[str]

    def __init__(self, tools: tuple[ToolSpec, ...] = ()) -> None:
        super().__init__(tools)
        self._in_block = False
        self._after_block = False

    @abstractmethod
    def read_block(self, body: str) -> list[tuple[str, Any]] | None:
        """The calls (name, arguments object) a block's body holds, or None when it is not calls."""

    def _rest(self) -> list[ParseEvent]:
        rest = self.open_marker + self._buf if self._in_block else self._buf
        self._in_block = False
        return [rest]

    def _step(self, out: list[ParseEvent], final: bool) -> bool:
        if self._in_block:
            at = self._buf.find(self.close_marker)
            if at < 0:
                return False
            body, self._buf = self._buf[:at], self._buf[at + len(self.close_marker) :]
            calls = self.read_block(body)
            self._in_block, self._after_block = False, calls is not None
            if calls is None:
                out.append(self.open_marker + body + self.close_marker)
            for name, arguments in calls or []:
                start = self._start_call(name)
                out += [start, ToolCallArguments(start.index, json.dumps(arguments, ensure_ascii=False))]
            return True
        if self._after_block:
            stripped = self._buf.lstrip()
            if not stripped:
                if final:
                    self._buf = ""
                return False
            if not final and self.open_marker.startswith(stripped):
                return False
            self._after_block = False
            if stripped.startswith(self.open_marker):
                self._buf = stripped
        at = self._buf.find(self.open_marker)
        if at >= 0:
            out.append(self._buf[:at])
            self._buf, self._in_block = self._buf[at + len(self.open_marker) :], True
            return True
        keep = 0 if final else held_back(self._buf, (self.open_marker,))
        out.append(self._buf[: len(self._buf) - keep])
        self._buf = self._buf[len(self._buf) - keep :]
        return False
