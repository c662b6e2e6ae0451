"""Pythonic calls (Llama 3.2 light models, Llama 4): `[get_weather(city="Paris"), get_time(zone="CET")]`
as the whole output. Values may be Python or JSON literals (`True` or `true`)."""

from __future__ import annotations

import ast
import json
from typing import Any

import regex

from server.constrained.json_schema import lark_json
from server.parsers.base import SpecialTokenLookup, ToolCallParser, merge
from server.parsers.events import CallGrammar, ParseEvent, ToolCallArguments, ToolSpec

_NAMES = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}


class PythonicParser(ToolCallParser):
    name = "pythonic"
    template_markers = ("[func_name1(",)

    def __init__(self, tools: tuple[ToolSpec, ...] = ()) -> None:
        super().__init__(tools)
        self._buf = ""
        self._in_list = False
        self._decided = False  # whether the output has shown that it is text

    def feed(self, text: str) -> list[ParseEvent]:
        self._buf += text
        if not self._decided and not self._in_list:
            stripped = self._buf.lstrip()
            if not stripped:
                return []
            if stripped.startswith("["):
                self._in_list = True
            else:
                self._decided = True
        if not self._in_list:
            out, self._buf = self._buf, ""
            return [out]
        end = _list_end(self._buf)
        if end is None:
            return []
        listing, after = self._buf[:end], self._buf[end:]
        self._buf = ""
        self._in_list, self._decided = False, True
        return merge(self._calls(listing) + ([after] if after else []))

    def finish(self) -> list[ParseEvent]:
        out, self._buf = self._buf, ""
        return [out] if out else []

    def _calls(self, listing: str) -> list[ParseEvent]:
        try:
            calls = parse_call_list(listing.strip())
        except (SyntaxError, ValueError):
            return [listing]
        events: list[ParseEvent] = []
        for name, arguments in calls:
            start = self._start_call(name)
            events += [start, ToolCallArguments(start.index, json.dumps(arguments, ensure_ascii=False))]
        return events

    @classmethod
    def grammar(cls, spec: CallGrammar, special: SpecialTokenLookup) -> str:
        rules: list[str] = []
        for i, tool in enumerate(spec.tools):
            rules += call_rules(i, tool)
        rules.append("call: " + " | ".join(f"call{i}" for i in range(len(spec.tools))))
        listing = '"[" call (", " call)* "]"' if spec.parallel else '"[" call "]"'
        if spec.required:
            rules.insert(0, f"start: {listing}")
        elif spec.text_grammar is not None:
            rules.insert(0, f"start: text | {listing}\ntext: {spec.text_grammar}")
        else:
            rules.insert(0, f"start: TEXT | {listing}\nTEXT: /[^\\[\\s](.|\\n)*/")
        return "\n".join(rules)


def call_rules(i: int, tool: ToolSpec) -> list[str]:
    """`name(k1=v1, k2=v2)` with the keywords in the schema's order, required ones always present."""
    properties: dict[str, Any] = (tool.parameters or {}).get("properties") or {}
    required = set((tool.parameters or {}).get("required") or [])
    keys = list(properties)
    rules = [f'call{i}: "{tool.name}(" a{i}_0_0 ")"']
    for j, key in enumerate(keys):
        for started in (0, 1):
            item = f'"{", " if started else ""}{key}=" {lark_json(properties[key])}'
            rest_after, rest_skip = f"a{i}_{j + 1}_1", f"a{i}_{j + 1}_{started}"
            body = f"{item} {rest_after}" if key in required else f"{item} {rest_after} | {rest_skip}"
            rules.append(f"a{i}_{j}_{started}: {body}")
    rules += [f'a{i}_{len(keys)}_0: ""', f'a{i}_{len(keys)}_1: ""']
    return rules


def _list_end(text: str) -> int | None:
    depth, quote, escaped = 0, "", False
    for i, ch in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def parse_call_list(listing: str) -> list[tuple[str, dict[str, Any]]]:
    source, names = _names_aliased(listing)
    tree = ast.parse(source, mode="eval").body
    if not isinstance(tree, ast.List):
        raise ValueError("not a list")
    calls = []
    for node in tree.elts:
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
            raise ValueError("not a call with keyword arguments")
        arguments = {names.get(kw.arg, kw.arg): _literal(kw.value) for kw in node.keywords if kw.arg}
        calls.append((names.get(node.func.id, node.func.id), arguments))
    return calls


# A string literal (either quote), or a call or parameter name: `name(` or `name=` (not `==`).
_STRING = regex.compile(r"""("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""")
_NAME = regex.compile(r"((?:[^\W\d]|-)[\w\-.]*)(\s*)(\(|=(?!=))")


def _names_aliased(listing: str) -> tuple[str, dict[str, str]]:
    """Function and parameter names are whatever the tools declare (`get-weather`, `from`, `class`,
    non-ASCII letters Python would normalize); Python's parser sees plain aliases (alias -> name)."""
    aliases: dict[str, str] = {}

    def alias(match: regex.Match[str]) -> str:
        name = f"_ow_{len(aliases)}"
        aliases[name] = match.group(1)
        return name + match.group(2) + match.group(3)

    parts = _STRING.split(listing)  # odd indices are string literals: left as they are
    return "".join(_NAME.sub(alias, p) if i % 2 == 0 else p for i, p in enumerate(parts)), aliases


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        return _joined_surrogates(node.value) if isinstance(node.value, str) else node.value
    if isinstance(node, ast.Name) and node.id in _NAMES:
        return _NAMES[node.id]
    if isinstance(node, ast.List | ast.Tuple):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        return {
            _literal(k): _literal(v) for k, v in zip(node.keys, node.values, strict=True) if k is not None
        }
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _literal(node.operand)
        if isinstance(value, int | float):
            return -value
    raise ValueError(f"not a literal: {ast.dump(node)}")


def _joined_surrogates(text: str) -> str:
    """JSON-style escapes of a character beyond the BMP (`"\\ud83d\\ude00"`, which the grammar
    allows) are two lone surrogates to Python: join each pair into its character, and make a lone
    one U+FFFD (it could not be sent as UTF-8)."""
    if not any("\ud800" <= ch <= "\udfff" for ch in text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
