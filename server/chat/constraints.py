"""response_format and tools -> the grammar each choice is sampled under, and the tool parser.

Every grammar is compiled before the first byte is sent, so a schema the grammar engine cannot
enforce is a 400 naming where it sits, never a 200 with unconstrained output.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from server.chat.tools import ToolPlan
from server.constrained.compiler import GrammarCompiler, GrammarError
from server.constrained.json_schema import ANY_OBJECT, lark_json, schema_grammar
from server.constrained.mask import one_line
from server.parsers.base import SpecialTokenLookup, ToolCallParser
from server.parsers.reasoning import harmony_final, harmony_prefix, think_prefix
from server.protocol.errors import InvalidRequest
from server.protocol.request import (
    ChatCompletionRequest,
    ResponseFormatJSONObject,
    ResponseFormatJSONSchema,
)


@dataclass(slots=True, frozen=True)
class Constraint:
    grammar: str | None  # None: free text
    tools: ToolPlan | None
    parser: type[ToolCallParser] | None


@dataclass(slots=True, frozen=True)
class ReasoningFirst:
    """The answer may open with the model's reasoning, free: the grammar applies after it.
    `prefix`: Lark rules defining `reasoning`; `answer_opening`: Lark the answer must open with
    (harmony's final-channel header), for a response_format."""

    prefix: str
    answer_opening: str | None = None


def reasoning_first(
    format_name: str | None, thinks: bool, inside: bool, special: SpecialTokenLookup
) -> ReasoningFirst | None:
    """What a model's reasoning adds to the grammar of a constrained answer: `inside`, the prompt
    opened the think block itself."""
    if format_name == "harmony":
        return ReasoningFirst(harmony_prefix(special), harmony_final(special))
    if format_name in ("think", "granite") and (thinks or inside):
        return ReasoningFirst(think_prefix(special, inside))
    return None


def build_constraint(
    request: ChatCompletionRequest,
    compiler: GrammarCompiler,
    parser: type[ToolCallParser],
    plan: ToolPlan | None,
    reasoning: ReasoningFirst | None = None,
) -> Constraint:
    """`plan`: the request's tools (plan_tools); `reasoning`: what the answer may open with."""
    schema, schema_grammar_text = _response_format(request, compiler)
    if plan is None:
        if reasoning is None or schema is None:  # free text: a reasoning format is read, not enforced
            return Constraint(schema_grammar_text, None, None)
        answer = f"answer: {reasoning.answer_opening or ''} {lark_json(schema)}"
        grammar = f"start: reasoning answer\n{reasoning.prefix}\n{answer}"
        _compile(compiler, grammar, "response_format", "The response format after reasoning")
        return Constraint(grammar, None, None)
    param, where = ("functions", "parameters") if plan.legacy_functions else ("tools", "function.parameters")
    for index, tool in enumerate(plan.tools):
        what = f"The parameters schema of function '{tool.name}'"
        tool_param = f"{param}[{index}].{where}"
        _compile(compiler, _schema_grammar(tool.parameters, tool_param, what), tool_param, what)
    text = lark_json(schema) if schema is not None else None
    grammar = parser.grammar(plan.call_grammar(text), compiler.special_token)
    if reasoning is not None:
        grammar = with_reasoning(grammar, reasoning.prefix)
    _compile(compiler, grammar, param, f"The tool-call grammar ({parser.name} format)")
    return Constraint(grammar, plan, parser)


def with_reasoning(grammar: str, prefix: str) -> str:
    """`grammar` (a Lark grammar of ours, its `start` rule at the start of a line) after the free
    reasoning that `prefix` defines."""
    renamed = re.sub(r"(?m)^start:", "answer:", grammar)
    return f"start: reasoning answer\n{prefix}\n{renamed}"


def _response_format(
    request: ChatCompletionRequest, compiler: GrammarCompiler
) -> tuple[dict[str, Any] | None, str | None]:
    """The schema the answer must follow, and its grammar (compiled and checked), if any."""
    fmt = request.response_format
    if isinstance(fmt, ResponseFormatJSONObject):
        if not any("json" in _message_text(m).lower() for m in request.messages):
            raise InvalidRequest(
                "'messages' must contain the word 'json' in some form, to use 'response_format' of type "
                "'json_object'.",
                param="messages",
            )
        schema, what = ANY_OBJECT, "The JSON object format"
    elif isinstance(fmt, ResponseFormatJSONSchema):
        schema = fmt.json_schema.schema_ if fmt.json_schema.schema_ is not None else ANY_OBJECT
        what = f"The schema of response_format '{fmt.json_schema.name}'"
    else:
        return None, None
    grammar = _schema_grammar(schema, "response_format", what)
    _compile(compiler, grammar, "response_format", what)
    return schema, grammar


def _schema_grammar(schema: dict[str, Any] | None, param: str, what: str) -> str:
    """llguidance's JSON-schema compiler refuses some schemas outright (values it cannot read)."""
    try:
        return schema_grammar(schema)
    except Exception as exc:  # what llguidance raises for a schema it cannot read varies
        raise InvalidRequest(f"{what} cannot be enforced: {one_line(str(exc))}", param=param) from exc


def _compile(compiler: GrammarCompiler, grammar: str, param: str, what: str) -> None:
    try:
        compiler.check(grammar)
    except GrammarError as exc:
        raise InvalidRequest(f"{what} cannot be enforced: {exc}", param=param) from exc


def _message_text(message: Any) -> str:
    content = getattr(message, "content", None)
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(getattr(part, "text", "") or "" for part in content)
    return json.dumps(content) if content is not None else ""
