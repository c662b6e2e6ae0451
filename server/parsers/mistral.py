"""Mistral (v3 tokenizers): `[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, ...]`."""

from __future__ import annotations

import regex

from server.parsers.base import JSON_STRING, JsonEnvelopeParser, SpecialTokenLookup, calls_json, marker
from server.parsers.events import CallGrammar

OPEN = "[TOOL_CALLS]"


class MistralParser(JsonEnvelopeParser):
    name = "mistral"
    template_markers = (OPEN,)
    open_markers = (OPEN,)
    syntax_markers = (OPEN,)
    list_open = regex.compile(r"\s*\[")
    header = regex.compile(rf'\s*\{{\s*"name"\s*:\s*(?P<name>{JSON_STRING})\s*,\s*"arguments"\s*:\s*\{{')
    call_close = regex.compile(r"\s*\}")
    next_call = regex.compile(r"\s*,")
    list_close = regex.compile(r"\s*\]")

    @classmethod
    def grammar(cls, spec: CallGrammar, special: SpecialTokenLookup) -> str:
        open_ = marker(OPEN, special)
        calls = 'call (", " call)*' if spec.parallel else "call"
        rules = [
            f'calls: {open_} "[" {calls} "]"',
            f"call: {calls_json(spec, 'arguments')}",
            r"TEXT: /(.|\n)*/",
        ]
        if spec.required:
            rules.insert(0, "start: calls")
        elif spec.text_grammar is not None:
            rules.insert(0, f"start: text | calls\ntext: {spec.text_grammar}")
        elif special(OPEN) is not None:
            rules.insert(0, "start: TEXT | TEXT calls")
        else:
            rules.insert(0, f'start: TEXT | head "[" {calls} "]"\nhead[lazy]: TEXT {open_}')
        return "\n".join(rules)
