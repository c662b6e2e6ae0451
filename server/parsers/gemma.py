"""Gemma 2/3 (whose templates have no tool support), the format of Google's function-calling guide:
a call is Python in a `tool_code` fence, one per fence, and the result comes back in a
`tool_output` fence.

```tool_code
get_weather(city="Paris", unit="c")
```
"""

from __future__ import annotations

import json
from typing import Any

from server.parsers.base import BlockParser, SpecialTokenLookup, start_rule
from server.parsers.events import CallGrammar
from server.parsers.pythonic import call_rules, parse_call_list

OPEN, CLOSE = "```tool_code\n", "\n```"


class GemmaParser(BlockParser):
    name = "gemma"
    template_markers = ("<start_of_turn>",)
    open_marker, close_marker = OPEN, CLOSE
    call_instructions = (
        "To call a function, write the call as Python with keyword arguments in a ```tool_code "
        "block, one call per block and nothing else in it:\n"
        "```tool_code\nfunction_name(param_name=value)\n```\n"
        "The function's result comes back in a ```tool_output block."
    )

    def read_block(self, body: str) -> list[tuple[str, Any]] | None:
        try:
            calls = parse_call_list(f"[{body.strip()}]")
        except (SyntaxError, ValueError):
            return None
        return calls if len(calls) == 1 else None

    @classmethod
    def write_calls(cls, calls: list[tuple[str, Any]]) -> str:
        return "\n".join(f"{OPEN}{name}({_keywords(arguments)}){CLOSE}" for name, arguments in calls)

    @classmethod
    def write_result(cls, content: str) -> str:
        return f"```tool_output\n{content}\n```"

    @classmethod
    def grammar(cls, spec: CallGrammar, special: SpecialTokenLookup) -> str:
        rules: list[str] = []
        for i, tool in enumerate(spec.tools):
            rules += call_rules(i, tool)
        more = ' ("\\n" block)*' if spec.parallel else ""
        rules += [
            "call: " + " | ".join(f"call{i}" for i in range(len(spec.tools))),
            f"calls: block{more}",
            f"block: {json.dumps(OPEN)} call {json.dumps(CLOSE)}",
            r"TEXT: /(.|\n)*/",
        ]
        rules.insert(0, start_rule(spec, False, json.dumps(OPEN), f"call {json.dumps(CLOSE)}{more}"))
        return "\n".join(rules)


def _keywords(arguments: Any) -> str:
    """Arguments as keyword arguments; JSON literals are Python's, but for true/false/null."""
    if not isinstance(arguments, dict):
        return ""
    return ", ".join(f"{key}={_literal(value)}" for key, value in arguments.items())


def _literal(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    return json.dumps(value, ensure_ascii=False)
