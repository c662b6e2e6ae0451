"""Qwen3-Coder (and Qwen3.5) XML calls: the function and each parameter are tags, and a value is
plain text (a string as it is, other types as JSON), typed back by the tool's schema.

<tool_call>
<function=get_weather>
<parameter=city>
Paris
</parameter>
</function>
</tool_call>
"""

from __future__ import annotations

import json
from typing import Any

import regex

from server.constrained.json_schema import lark_json
from server.parsers.base import BlockParser, SpecialTokenLookup, marker, start_rule
from server.parsers.events import CallGrammar, ToolSpec

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_FUNCTION = regex.compile(r"\s*<function=([^>\n]+)>\n?(.*?)\s*</function>\s*", regex.DOTALL)
_PARAMETER = regex.compile(r"\s*<parameter=([^>\n]+)>\n?(.*?)\n?</parameter>", regex.DOTALL)
_PYTHON_LITERALS = {"True": True, "False": False, "None": None}
_STRING_KEYWORDS = ("pattern", "format")  # constraints only a JSON string can be held to


class Qwen3XmlParser(BlockParser):
    name = "qwen3_xml"
    template_markers = ("<function=",)
    syntax_markers = (OPEN, CLOSE)
    open_marker, close_marker = OPEN, CLOSE
    call_instructions = (
        "To call a function, reply in this format, one parameter tag per argument:\n"
        "<tool_call>\n<function=function_name>\n<parameter=param_name>\nvalue\n</parameter>\n"
        "</function>\n</tool_call>"
    )

    def read_block(self, body: str) -> list[tuple[str, Any]] | None:
        found = _FUNCTION.fullmatch(body)
        if found is None:
            return None
        name, params = found.group(1), found.group(2)
        properties = _properties(self.tools.get(name))
        arguments: dict[str, Any] = {}
        end = 0
        for parameter in _PARAMETER.finditer(params):
            if params[end : parameter.start()].strip():
                return None
            key, raw = parameter.group(1), parameter.group(2)
            arguments[key] = _typed(raw, properties.get(key))
            end = parameter.end()
        if params[end:].strip():
            return None
        return [(name, arguments)]

    @classmethod
    def write_calls(cls, calls: list[tuple[str, Any]]) -> str:
        out = []
        for name, arguments in calls:
            params = "".join(
                f"<parameter={key}>\n{value if isinstance(value, str) else json.dumps(value)}\n</parameter>\n"
                for key, value in (arguments if isinstance(arguments, dict) else {}).items()
            )
            out.append(f"{OPEN}\n<function={name}>\n{params}</function>\n{CLOSE}")
        return "\n".join(out)

    @classmethod
    def grammar(cls, spec: CallGrammar, special: SpecialTokenLookup) -> str:
        open_, close = marker(OPEN, special), marker(CLOSE, special)
        more = f' ("\\n" {open_} body)*' if spec.parallel else ""
        rules = [
            f'body: "\\n" call "\\n" {close}',
            "call: " + " | ".join(f"call{i}" for i in range(len(spec.tools))),
            r"TEXT: /(.|\n)*/",
        ]
        for i, tool in enumerate(spec.tools):
            rules += _call_rules(i, tool)
        rules.insert(0, start_rule(spec, special(OPEN) is not None, open_, f"body{more}"))
        rules.insert(1, f"calls: {open_} body{more}")
        return "\n".join(rules)


def _properties(tool: ToolSpec | None) -> dict[str, Any]:
    return ((tool.parameters if tool else None) or {}).get("properties") or {}


def _is_plain_string(schema: Any) -> bool:
    """A string the model writes as it is (no quotes): `type: string`, or an enum/const of strings."""
    if not isinstance(schema, dict):
        return False
    if "enum" in schema or "const" in schema:
        values = schema.get("enum", [schema.get("const")])
        return all(isinstance(v, str) for v in values)
    return schema.get("type") == "string" and not any(k in schema for k in _STRING_KEYWORDS)


def _typed(raw: str, schema: Any) -> Any:
    """A value as its schema types it: plain strings stay text, the rest is read as JSON (and
    kept as text when it is not JSON). An undeclared parameter is a string."""
    if schema is None or _is_plain_string(schema):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        # Qwen3-Coder's template writes a boolean back as Python does (`True`).
        return _PYTHON_LITERALS.get(raw.strip(), raw)


def _value(schema: Any) -> tuple[str, bool]:
    """Lark for one parameter's value up to its closing tag, and whether the rule is lazy (free
    text, ended by the first closing tag)."""
    close = '"\\n</parameter>\\n"'
    if not _is_plain_string(schema):
        return f"{lark_json(schema if isinstance(schema, dict) else {})} {close}", False
    if "enum" in schema or "const" in schema:
        values = schema.get("enum", [schema.get("const")])
        return "(" + " | ".join(json.dumps(v) for v in values) + f") {close}", False
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    return f"/(.|\\n){{{low},{'' if high is None else high}}}/ {close}", True


def _call_rules(i: int, tool: ToolSpec) -> list[str]:
    """`<function=name>` and the parameters in the schema's order, required ones always present;
    with no declared properties, any parameters as text."""
    properties = _properties(tool)
    required = set((tool.parameters or {}).get("required") or [])
    head = f"call{i}: {json.dumps(f'<function={tool.name}>' + chr(10))}"
    if not properties:
        return [
            f'{head} p{i}_any* "</function>"',
            f'p{i}_any: "<parameter=" /[A-Za-z0-9_.-]+/ ">\\n" v{i}_any',
            f'v{i}_any[lazy]: /(.|\\n)*/ "\\n</parameter>\\n"',
        ]
    keys = list(properties)
    rules = [f'{head} p{i}_0 "</function>"']
    for j, key in enumerate(keys):
        value, lazy = _value(properties[key])
        rules.append(f"v{i}_{j}{'[lazy]' if lazy else ''}: {value}")
        item = f"{json.dumps(f'<parameter={key}>' + chr(10))} v{i}_{j} p{i}_{j + 1}"
        rules.append(f"p{i}_{j}: {item}" + ("" if key in required else f" | p{i}_{j + 1}"))
    rules.append(f'p{i}_{len(keys)}: ""')
    return rules
