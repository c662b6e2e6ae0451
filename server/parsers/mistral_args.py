"""Mistral with v11+ tokenizers (Mistral Small 3.2, Magistral, Devstral): each call is
`[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}`, several calls one after another."""

from __future__ import annotations

import json

import regex

from server.constrained.json_schema import lark_json
from server.parsers.base import JsonEnvelopeParser, SpecialTokenLookup, marker, start_rule
from server.parsers.events import CallGrammar

OPEN, ARGS = "[TOOL_CALLS]", "[ARGS]"


class MistralArgsParser(JsonEnvelopeParser):
    name = "mistral_args"
    template_markers = (ARGS,)
    open_markers = (OPEN,)
    syntax_markers = (OPEN, ARGS)
    header = regex.compile(rf"\s*(?P<name>[A-Za-z0-9_-]{{1,64}}){regex.escape(ARGS)}\s*\{{")
    name_is_json = False
    call_close = regex.compile(r"")

    @classmethod
    def write_calls(cls, calls: list[tuple[str, object]]) -> str:
        return "".join(
            f"{OPEN}{name}{ARGS}{json.dumps(arguments, ensure_ascii=False)}" for name, arguments in calls
        )

    @classmethod
    def grammar(cls, spec: CallGrammar, special: SpecialTokenLookup) -> str:
        open_, args = marker(OPEN, special), marker(ARGS, special)
        alternatives = " | ".join(f"call_{i}" for i in range(len(spec.tools)))
        rules = [f"call: {open_} ({alternatives})", r"TEXT: /(.|\n)*/"]
        rules += [
            f"call_{i}: {json.dumps(tool.name)} {args} {lark_json(tool.parameters or {'type': 'object'})}"
            for i, tool in enumerate(spec.tools)
        ]
        calls = "call+" if spec.parallel else "call"
        after_open = f"({alternatives})" + (" call*" if spec.parallel else "")
        rules.insert(0, f"calls: {calls}")
        rules.insert(0, start_rule(spec, special(OPEN) is not None, open_, after_open))
        return "\n".join(rules)
