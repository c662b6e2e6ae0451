"""Llama 3.1/3.2 JSON calls: `{"name": "get_weather", "parameters": {"city": "Paris"}}`, optionally
after `<|python_tag|>`, several separated by `;`."""

from __future__ import annotations

import regex

from server.parsers.base import JSON_STRING, JsonEnvelopeParser, SpecialTokenLookup, calls_json
from server.parsers.events import CallGrammar


class Llama3JsonParser(JsonEnvelopeParser):
    name = "llama3_json"
    template_markers = ('"parameters": dictionary of argument name', "<|python_tag|>")
    open_markers = ("<|python_tag|>",)
    syntax_markers = open_markers
    bare_start = True
    header = regex.compile(
        rf'\s*\{{\s*"name"\s*:\s*(?P<name>{JSON_STRING})\s*,\s*"(?:parameters|arguments)"\s*:\s*\{{'
    )
    call_close = regex.compile(r"\s*\}")
    next_call = regex.compile(r"\s*;\s*")

    @classmethod
    def grammar(cls, spec: CallGrammar, special: SpecialTokenLookup) -> str:
        calls = 'call ("; " call)*' if spec.parallel else "call"
        rules = [f"calls: {calls}", f"call: {calls_json(spec, 'parameters')}"]
        if spec.required:
            rules.insert(0, "start: calls")
        elif spec.text_grammar is not None:
            rules.insert(0, f"start: text | calls\ntext: {spec.text_grammar}")
        else:  # text may not open with `{` (or blank space before one): that is how a call starts
            rules.insert(0, "start: TEXT | calls\nTEXT: /[^{\\s](.|\\n)*/")
        return "\n".join(rules)
