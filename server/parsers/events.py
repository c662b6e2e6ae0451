"""What a tool-call parser turns model text into, and what it is told about the tools."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True, frozen=True)
class ToolSpec:
    name: str
    parameters: dict[str, Any]  # a JSON schema of the arguments object
    description: str | None = None


@dataclass(slots=True, frozen=True)
class ToolCallStart:
    index: int
    name: str


@dataclass(slots=True, frozen=True)
class ToolCallArguments:
    index: int
    fragment: str  # the fragments of one call concatenate to its JSON arguments


@dataclass(slots=True, frozen=True)
class Reasoning:
    text: str  # the model's thinking (gpt-oss's analysis channel): not content


# Plain `str` events are assistant content.
ParseEvent = str | ToolCallStart | ToolCallArguments | Reasoning


@dataclass(slots=True, frozen=True)
class CallGrammar:
    """How calls must look: which tools, whether one is required, whether several may follow."""

    tools: tuple[ToolSpec, ...]
    required: bool  # `required` or a named tool_choice: the output is calls only
    parallel: bool  # several calls allowed
    text_grammar: str | None = None  # Lark fragment for the non-call alternative (a JSON response_format)
