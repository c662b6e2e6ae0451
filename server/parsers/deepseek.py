"""DeepSeek V3 / R1 and the R1 distills:

<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather
```json
{"city": "Paris"}
```<｜tool▁call▁end｜><｜tool▁calls▁end｜>

(several calls one after another inside the calls block).
"""

from __future__ import annotations

import json

import regex

from server.constrained.json_schema import lark_json
from server.parsers.base import JsonEnvelopeParser, SpecialTokenLookup, marker, start_rule
from server.parsers.events import CallGrammar

CALLS_BEGIN, CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
CALL_BEGIN, SEP, CALL_END = "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>", "<｜tool▁call▁end｜>"
FENCE_OPEN, FENCE_CLOSE = "\n```json\n", "\n```"


class DeepSeekParser(JsonEnvelopeParser):
    name = "deepseek"
    template_markers = (CALLS_BEGIN,)
    open_markers = (CALLS_BEGIN,)
    syntax_markers = (CALLS_BEGIN, CALLS_END, CALL_BEGIN, SEP, CALL_END)
    header = regex.compile(
        rf"\s*{regex.escape(CALL_BEGIN)}function{regex.escape(SEP)}(?P<name>[A-Za-z0-9_.-]{{1,64}})\s*```json\s*\{{"
    )
    name_is_json = False
    call_close = regex.compile(rf"\s*```\s*{regex.escape(CALL_END)}")
    next_call = regex.compile(rf"(?={regex.escape(CALL_BEGIN)})")
    list_close = regex.compile(rf"\s*{regex.escape(CALLS_END)}")

    @classmethod
    def write_calls(cls, calls: list[tuple[str, object]]) -> str:
        body = "".join(
            f"{CALL_BEGIN}function{SEP}{name}{FENCE_OPEN}{json.dumps(args, ensure_ascii=False)}"
            f"{FENCE_CLOSE}{CALL_END}"
            for name, args in calls
        )
        return f"{CALLS_BEGIN}{body}{CALLS_END}"

    @classmethod
    def grammar(cls, spec: CallGrammar, special: SpecialTokenLookup) -> str:
        begin, end = marker(CALLS_BEGIN, special), marker(CALLS_END, special)
        call_begin, sep, call_end = (
            marker(CALL_BEGIN, special),
            marker(SEP, special),
            marker(CALL_END, special),
        )
        alternatives = " | ".join(f"call_{i}" for i in range(len(spec.tools)))
        calls = "call+" if spec.parallel else "call"
        rules = [
            f"calls: {begin} {calls} {end}",
            f'call: {call_begin} "function" {sep} ({alternatives}) {json.dumps(FENCE_CLOSE)} {call_end}',
            r"TEXT: /(.|\n)*/",
        ]
        for i, tool in enumerate(spec.tools):
            arguments = lark_json(tool.parameters or {"type": "object"})
            rules.append(f"call_{i}: {json.dumps(tool.name + FENCE_OPEN)} {arguments}")
        rules.insert(0, start_rule(spec, special(CALLS_BEGIN) is not None, begin, f"{calls} {end}"))
        return "\n".join(rules)
