"""Hermes style (Qwen2.5/Qwen3, Hermes 2/3, SmolLM3, and our built-in tool prompt):

<tool_call>
{"name": "get_weather", "arguments": {"city": "Paris"}}
</tool_call>
"""

from __future__ import annotations

import regex

from server.parsers.base import JSON_STRING, JsonEnvelopeParser, SpecialTokenLookup, calls_json, marker
from server.parsers.events import CallGrammar

OPEN, CLOSE = "<tool_call>", "</tool_call>"


class HermesParser(JsonEnvelopeParser):
    name = "hermes"
    template_markers = (OPEN,)
    open_markers = (OPEN,)
    syntax_markers = (OPEN, CLOSE)
    header = regex.compile(rf'\s*\{{\s*"name"\s*:\s*(?P<name>{JSON_STRING})\s*,\s*"arguments"\s*:\s*\{{')
    call_close = regex.compile(rf"\s*\}}\s*{regex.escape(CLOSE)}")

    @classmethod
    def grammar(cls, spec: CallGrammar, special: SpecialTokenLookup) -> str:
        open_, close = marker(OPEN, special), marker(CLOSE, special)
        more = f' ("\\n" {open_} body)*' if spec.parallel else ""
        rules = [f'body: "\\n" {calls_json(spec, "arguments")} "\\n" {close}', r"TEXT: /(.|\n)*/"]
        if spec.required:
            rules.insert(0, f"start: {open_} body{more}")
        elif spec.text_grammar is not None:
            rules.insert(0, f"start: text | {open_} body{more}\ntext: {spec.text_grammar}")
        elif special(OPEN) is not None:
            rules.insert(0, f"start: TEXT | TEXT {open_} body{more}")
        else:  # a text marker: free text until the marker is written, then the call is enforced
            rules.insert(0, f"start: TEXT | head body{more}\nhead[lazy]: TEXT {open_}")
        return "\n".join(rules)
