"""The request's tools, functions and tool_choice -> what the model is shown and what it may call."""

from __future__ import annotations

import json
from dataclasses import dataclass

from server.parsers.events import CallGrammar, ToolSpec
from server.protocol.errors import InvalidRequest, UnsupportedParameter, printable
from server.protocol.request import (
    AllowedToolsChoice,
    ChatCompletionRequest,
    CustomTool,
    FunctionDefinition,
    NamedCustomToolChoice,
    NamedFunction,
    NamedToolChoice,
    Tool,
)


@dataclass(slots=True, frozen=True)
class ToolPlan:
    tools: tuple[ToolSpec, ...]  # all declared tools: what the prompt shows
    callable: tuple[ToolSpec, ...]  # what the grammar lets the model call
    required: bool
    parallel: bool
    legacy_functions: bool  # `functions`/`function_call`: answered with message.function_call

    def call_grammar(self, text_grammar: str | None) -> CallGrammar:
        return CallGrammar(self.callable, self.required, self.parallel, text_grammar)


def plan_tools(request: ChatCompletionRequest, parallel_calls: bool = True) -> ToolPlan | None:
    """None when no call can be produced (no tools, or tool_choice/function_call "none").
    `parallel_calls` False: the model's template takes one call per turn, so that is the default
    and `parallel_tool_calls: true` is refused."""
    if request.parallel_tool_calls is not None and not request.tools:
        raise InvalidRequest(
            "'parallel_tool_calls' is only allowed when 'tools' are given.", param="parallel_tool_calls"
        )
    if request.tools and request.functions:
        raise InvalidRequest(
            "Give either 'tools' or the deprecated 'functions', not both.", param="functions"
        )
    # "none" without tools asks for nothing and is accepted; any other choice needs something to call.
    if request.tool_choice not in (None, "none") and not request.tools:
        raise InvalidRequest("'tool_choice' is only allowed when 'tools' are given.", param="tool_choice")
    if request.function_call not in (None, "none") and not request.functions:
        raise InvalidRequest(
            "'function_call' is only allowed when 'functions' are given.", param="function_call"
        )
    if request.tools:
        specs = tuple(_spec(tool.function) for tool in _function_tools(request.tools))
        _check_unique(specs, "tools")
        choice = request.tool_choice or "auto"
        if request.parallel_tool_calls and not parallel_calls:
            raise UnsupportedParameter(
                "parallel_tool_calls",
                "cannot be true for this model: its chat template takes one tool call per turn",
            )
        parallel = request.parallel_tool_calls is not False and parallel_calls
        return _plan(specs, choice, parallel, legacy=False, param="tool_choice")
    if request.functions:
        specs = tuple(_spec(fn) for fn in request.functions)
        _check_unique(specs, "functions")
        return _plan(
            specs, request.function_call or "auto", parallel=False, legacy=True, param="function_call"
        )
    return None


def _function_tools(tools: list[Tool | CustomTool]) -> list[Tool]:
    for index, tool in enumerate(tools):
        if isinstance(tool, CustomTool):
            raise UnsupportedParameter(
                f"tools[{index}]",
                "is a 'custom' tool (free-form input); this server supports 'function' tools only",
            )
    return tools  # type: ignore[return-value]


def _plan(
    specs: tuple[ToolSpec, ...],
    choice: str | NamedToolChoice | NamedCustomToolChoice | AllowedToolsChoice | NamedFunction,
    parallel: bool,
    legacy: bool,
    param: str,
) -> ToolPlan | None:
    if choice == "none":
        return None
    if choice in ("auto", "required"):
        return ToolPlan(specs, specs, choice == "required", parallel, legacy)
    if isinstance(choice, NamedCustomToolChoice):
        raise UnsupportedParameter(param, "names a 'custom' tool; this server supports 'function' tools only")
    if isinstance(choice, AllowedToolsChoice):
        # All tools stay in the prompt (it stays the same, and cached); only these may be called.
        entries = [
            (entry, f"{param}.allowed_tools.tools[{i}]") for i, entry in enumerate(choice.allowed_tools.tools)
        ]
        named = {_declared(specs, _allowed_name(entry, where), where).name for entry, where in entries}
        allowed = tuple(spec for spec in specs if spec.name in named)
        return ToolPlan(specs, allowed, choice.allowed_tools.mode == "required", parallel, legacy)
    name = choice.function.name if isinstance(choice, NamedToolChoice) else choice.name  # type: ignore[union-attr]
    return ToolPlan(specs, (_declared(specs, name, param),), True, False, legacy)


def _allowed_name(entry: dict[str, object], param: str) -> str:
    """An `allowed_tools.tools` entry: `{"type": "function", "function": {"name": ...}}`."""
    if entry.get("type") == "custom":
        raise UnsupportedParameter(param, "names a 'custom' tool; this server supports 'function' tools only")
    function = entry.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if entry.get("type") != "function" or not isinstance(name, str):
        raise InvalidRequest(
            f'Invalid \'{param}\': expected {{"type": "function", "function": {{"name": ...}}}}.',
            param=param,
        )
    return name


def _declared(specs: tuple[ToolSpec, ...], name: str, param: str) -> ToolSpec:
    for spec in specs:
        if spec.name == name:
            return spec
    declared = ", ".join(repr(s.name) for s in specs)
    raise InvalidRequest(
        f"Invalid '{param}': function {printable(name)!r} is not among the declared functions ({declared}).",
        param=param,
    )


def _spec(fn: FunctionDefinition) -> ToolSpec:
    return ToolSpec(fn.name, fn.parameters or {"type": "object", "properties": {}}, fn.description)


def _check_unique(specs: tuple[ToolSpec, ...], param: str) -> None:
    names = [s.name for s in specs]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise InvalidRequest(f"Duplicate function name {name!r} in '{param}'.", param=f"{param}[{index}]")


def template_tools(tools: tuple[ToolSpec, ...]) -> list[dict[str, object]]:
    """The tools as chat templates expect them (OpenAI's shape, arguments schema as an object)."""
    out: list[dict[str, object]] = []
    for tool in tools:
        function: dict[str, object] = {"name": tool.name, "parameters": tool.parameters}
        if tool.description is not None:
            function["description"] = tool.description
        out.append({"type": "function", "function": function})
    return out


def builtin_tool_prompt(tools: tuple[ToolSpec, ...], call_instructions: str) -> str:
    """For chat templates with no tool support: the tools as JSON in the widespread Hermes style,
    and how to call them in the model's own format (`call_instructions`, from its parser)."""
    listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in template_tools(tools))
    return (
        "You are a function calling AI model. You are given function signatures within <tools></tools> "
        "XML tags. You may call one or more of these functions to answer the user. Do not make up "
        "values for arguments. Here are the available tools:\n"
        f"<tools>\n{listing}\n</tools>\n{call_instructions}"
    )
