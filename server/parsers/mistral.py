"""Formats that write a JSON list of calls after one marker token:

- Mistral (v3 tokenizers): `[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, ...]`
- Granite 3.x: `<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}, ...]`
- Phi-4-mini: `<|tool_call|>[{"name": "get_weather", "arguments": {...}}, ...]<|/tool_call|>`
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import regex

from server.parsers.base import (
    JSON_STRING,
    JsonEnvelopeParser,
    SpecialTokenLookup,
    calls_json,
    marker,
    start_rule,
)
from server.parsers.events import CallGrammar

OPEN = "[TOOL_CALLS]"


class JsonListParser(JsonEnvelopeParser):
    """`OPEN [call, call, ...] CLOSE`, CLOSE optional per format."""

    open_marker: ClassVar[str]
    close_marker: ClassVar[str | None] = None
    list_open = regex.compile(r"\s*\[")
    header = regex.compile(rf'\s*\{{\s*"name"\s*:\s*(?P<name>{JSON_STRING})\s*,\s*"arguments"\s*:\s*\{{')
    call_close = regex.compile(r"\s*\}")
    next_call = regex.compile(r"\s*,")

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.open_markers = (cls.open_marker,)
        cls.syntax_markers = tuple(m for m in (cls.open_marker, cls.close_marker) if m is not None)
        close = r"\s*\]" + (rf"\s*{regex.escape(cls.close_marker)}" if cls.close_marker else "")
        cls.list_close = regex.compile(close)

    @classmethod
    def write_calls(cls, calls: list[tuple[str, Any]]) -> str:
        listed = json.dumps(
            [{"name": name, "arguments": arguments} for name, arguments in calls], ensure_ascii=False
        )
        return f"{cls.open_marker}{listed}{cls.close_marker or ''}"

    @classmethod
    def grammar(cls, spec: CallGrammar, special: SpecialTokenLookup) -> str:
        open_ = marker(cls.open_marker, special)
        close = f" {marker(cls.close_marker, special)}" if cls.close_marker else ""
        calls = 'call (", " call)*' if spec.parallel else "call"
        return "\n".join(
            [
                start_rule(spec, special(cls.open_marker) is not None, open_, f'"[" {calls} "]"{close}'),
                f'calls: {open_} "[" {calls} "]"{close}',
                f"call: {calls_json(spec, 'arguments')}",
                r"TEXT: /(.|\n)*/",
            ]
        )


class MistralParser(JsonListParser):
    name = "mistral"
    template_markers = (OPEN,)
    open_marker = OPEN


class GraniteParser(JsonListParser):
    name = "granite"
    template_markers = ("<|tool_call|>",)
    open_marker = "<|tool_call|>"


class Phi4MiniParser(JsonListParser):
    name = "phi4_mini"
    # Phi-4-mini's template reads tools from the system message into `<|tool|>…<|/tool|>`.
    template_markers = ("<|tool|>",)
    open_marker = "<|tool_call|>"
    close_marker = "<|/tool_call|>"
