"""Messages -> prompt text and token ids, through the model's own chat template."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from server.chat.call_ids import ANY, CANDIDATES, CallIdFormat
from server.chat.tools import builtin_tool_prompt, template_tools
from server.engine.slots import common_prefix
from server.media.parts import RequestMedia
from server.parsers.base import ToolCallParser
from server.parsers.events import ToolSpec
from server.parsers.hermes import HermesParser
from server.protocol.errors import InvalidRequest, UnsupportedParameter
from server.protocol.request import (
    AssistantMessage,
    DeveloperMessage,
    FunctionCall,
    FunctionMessage,
    Message,
    RefusalPart,
    SystemMessage,
    TextPart,
    ToolCall,
    ToolMessage,
    UserMessage,
)

# Used for models that ship no chat template (base models): plain ChatML.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
PART_SEPARATOR = "\n"  # text parts of one message are joined with a newline, as vLLM does


# Where a template reads the tools from; "prompt": nowhere, so our tool prompt goes in the system turn.
ToolsFrom = Literal["variable", "system message", "prompt"]
_TOOL_PLACES: tuple[ToolsFrom, ...] = ("variable", "system message")
_PROBE_TOOL = "probe_tool_b41c7e"

# Stands for the end of a content part with a prompt_cache_breakpoint in a second rendering that
# finds where each breakpoint lands (private-use characters: no template or text has them).
_MARKER = "\ue000{}\ue001"
_MARKERS = re.compile("\ue000([0-9]+)\ue001")


@dataclass(slots=True, frozen=True)
class Prompt:
    text: str
    token_ids: list[int]
    # For each content part with a prompt_cache_breakpoint: how many leading prompt tokens end at
    # or before the end of that part, and the breakpoint's ttl.
    breakpoints: tuple[tuple[int, str], ...] = ()


class ChatTemplater:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, template: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.template = template or tokenizer.chat_template or CHATML_TEMPLATE
        self.knows_developer = "developer" in self.template
        self.knows_tool_calls = "tool_calls" in self.template
        self.reads_verbosity = "verbosity" in self.template
        # The model's tool-call format (the registry sets its parser): how calls and results are
        # written into turns when the template cannot render `tool_calls` or a tool role, and how
        # our tool prompt asks for calls. Hermes by default.
        self.tool_format: type[ToolCallParser] = HermesParser
        self.call_ids = ANY
        self.takes_system = True
        self.takes_system = self._takes_system()
        self.tools_from: ToolsFrom = "prompt"
        self.tools_from = self._where_tools_are_read()
        self.call_ids = self._accepted_call_ids()
        self.parallel_calls = self._takes_parallel_calls()

    def _takes_system(self) -> bool:
        """Whether a system turn renders (Gemma 2's template raises on one): where it does not, the
        system prompt (ours with the tools included) opens the first user turn instead."""
        probe: list[Message] = [
            SystemMessage(role="system", content=_PROBE_TOOL),
            UserMessage(role="user", content="probe"),
        ]
        try:
            return _PROBE_TOOL in self._text(probe, ())
        except Exception:  # a template may fail on a probe in any way
            return False

    def _where_tools_are_read(self) -> ToolsFrom:
        """Where this template reads the tools from, found by rendering a probe tool: the `tools`
        variable (most), the system message's `tools` field (Phi-4-mini), or nowhere, when the
        tools would be dropped silently: those templates get our tool prompt."""
        probe = (ToolSpec(_PROBE_TOOL, {"type": "object", "properties": {}}, None),)
        messages: list[Message] = [
            SystemMessage(role="system", content="probe"),
            UserMessage(role="user", content="probe"),
        ]
        if "tools" in self.template:
            for place in _TOOL_PLACES:
                self.tools_from = place
                try:
                    if _PROBE_TOOL in self._text(messages, probe):
                        return place
                except Exception:  # a template may fail on a probe in any way; that place is out
                    continue
        return "prompt"

    def _takes_parallel_calls(self) -> bool:
        """Whether a turn of two tool calls renders with both (Llama 3.1's template raises on more
        than one, gpt-oss's renders the first only): a model whose template cannot take its own
        parallel calls back must not make them."""
        return not self.knows_tool_calls or self._renders_calls(2, self.call_ids)

    def _accepted_call_ids(self) -> CallIdFormat:
        """The id format the template takes back (Mistral's templates raise on any id that is not
        9 alphanumeric characters): the first candidate a tool-call turn renders with."""
        if not self.knows_tool_calls:
            return ANY
        return next((c for c in CANDIDATES if self._renders_calls(1, c)), ANY)

    def _renders_calls(self, count: int, call_ids: CallIdFormat) -> bool:
        """Whether a probe turn of `count` tool calls with ids of `call_ids`, and their results,
        renders through the template, every call in it."""
        ids = [call_ids.new() for _ in range(count)]
        names = [f"{_PROBE_TOOL}_{n}" for n in range(count)]
        calls = [
            ToolCall(id=i, function=FunctionCall(name=name, arguments="{}"))
            for i, name in zip(ids, names, strict=True)
        ]
        probe: list[Message] = [
            UserMessage(role="user", content="probe"),
            AssistantMessage(role="assistant", tool_calls=calls),  # type: ignore[arg-type]
            *(ToolMessage(role="tool", content="probe", tool_call_id=i) for i in ids),
        ]
        try:
            text = self._text(probe, ())
        except Exception:  # a template may fail on a probe in any way
            return False
        return all(name in text for name in names)

    def render(
        self,
        messages: list[Message],
        tools: tuple[ToolSpec, ...] = (),
        variables: dict[str, Any] | None = None,
        system_flag: str | None = None,
        media: RequestMedia | None = None,
    ) -> Prompt:
        """`variables`: what the template is given besides the messages and tools (verbosity,
        reasoning switches); `system_flag`: text the system prompt ends with (`/no_think`);
        `media`: what the request's image, audio and file parts became (media.parts)."""
        text = self._text(messages, tools, variables, system_flag, media)
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        marked, ttls = _with_markers(messages)
        if not ttls:
            return Prompt(text, ids)
        return Prompt(
            text,
            ids,
            self._breakpoints(self._text(marked, tools, variables, system_flag, media), ttls, text, ids),
        )

    def _breakpoints(
        self, marked: str, ttls: list[str], text: str, ids: list[int]
    ) -> tuple[tuple[int, str], ...]:
        """Where each marker sits in the marked rendering with the markers taken out. The template
        may render a part's surroundings differently with the marker in (`| trim`, say): a
        breakpoint never goes past the text both renderings share, so its tokens are always a
        prefix of the real prompt's, ending at or before the end of its part."""
        positions: dict[int, int] = {}
        removed = 0
        for found in _MARKERS.finditer(marked):
            positions.setdefault(int(found.group(1)), found.start() - removed)
            removed += len(found.group(0))
        bare = _MARKERS.sub("", marked)
        shared = common_prefix(bare, text, min(len(bare), len(text)))  # type: ignore[arg-type]
        out = []
        for index, ttl in enumerate(ttls):
            if index not in positions:
                continue  # the template leaves that message out
            end = min(positions[index], shared)
            head = self.tokenizer(text[:end], add_special_tokens=False)["input_ids"]
            out.append((common_prefix(list(head), ids, len(ids)), ttl))
        return tuple(out)

    def _text(
        self,
        messages: list[Message],
        tools: tuple[ToolSpec, ...],
        variables: dict[str, Any] | None = None,
        system_flag: str | None = None,
        media: RequestMedia | None = None,
    ) -> str:
        converted = self._convert(messages, media)
        extra: dict[str, Any] = dict(variables or {})
        if tools and self.tools_from == "variable":
            extra["tools"] = template_tools(tools)
        elif tools and self.tools_from == "system message":
            if not converted or converted[0]["role"] != "system":
                converted.insert(0, {"role": "system", "content": ""})
            converted[0]["tools"] = json.dumps(template_tools(tools), ensure_ascii=False)
        elif tools:
            _add_to_system(converted, builtin_tool_prompt(tools, self.tool_format.call_instructions))
        if system_flag is not None:
            _add_to_system(converted, system_flag, separator=" ")
        if not self.takes_system and converted and converted[0]["role"] == "system":
            _fold_system(converted)
        continue_final = converted[-1]["role"] == "assistant"
        try:
            text = self.tokenizer.apply_chat_template(
                converted,
                **extra,
                chat_template=self.template,
                tokenize=False,
                add_generation_prompt=not continue_final,
                continue_final_message=continue_final,
            )
        except (TemplateError, ValueError) as exc:
            raise InvalidRequest(
                f"The model's chat template rejected the messages: {exc}", param="messages"
            ) from exc
        return str(text)

    def _convert(self, messages: list[Message], media: RequestMedia | None = None) -> list[dict[str, Any]]:
        system_parts: list[str] = []
        out: list[dict[str, Any]] = []
        results_turn: dict[str, Any] | None = None
        for index, message in enumerate(messages):
            if isinstance(message, DeveloperMessage | SystemMessage):
                if isinstance(message, DeveloperMessage) and self.knows_developer:
                    out.append(_named({"role": "developer", "content": _text(message.content)}, message.name))
                else:
                    system_parts.append(_text(message.content))
            elif isinstance(message, UserMessage):
                out.append(
                    _named({"role": "user", "content": _user_content(message, index, media)}, message.name)
                )
            elif isinstance(message, AssistantMessage):
                out.append(self._assistant(message))
            elif isinstance(message, ToolMessage | FunctionMessage):
                content = (
                    _text(message.content) if isinstance(message, ToolMessage) else message.content or ""
                )
                call_id = message.tool_call_id if isinstance(message, ToolMessage) else None
                turn = self._tool_result(content, call_id, message.name)
                if turn["role"] == "user" and results_turn is not None and out and out[-1] is results_turn:
                    # Results of one turn of calls share one user turn: many templates without
                    # a tool role (Gemma's) demand that user and assistant turns alternate.
                    results_turn["content"] += "\n" + turn["content"]
                    continue
                results_turn = turn if turn["role"] == "user" else None
                out.append(turn)
        if system_parts:
            # Several system/developer messages are merged, in order, into one leading system turn:
            # many templates accept only one, and only first.
            out.insert(0, {"role": "system", "content": "\n\n".join(system_parts)})
        return out

    def _assistant(self, message: AssistantMessage) -> dict[str, Any]:
        content = _assistant_text(message)
        # (Custom tool calls are refused before rendering: params.refuse_unsupported.)
        calls: list[tuple[str | None, FunctionCall]] = [
            (self.call_ids.fit(c.id), c.function) for c in message.tool_calls or [] if isinstance(c, ToolCall)
        ]
        if message.function_call is not None:
            calls.append((None, message.function_call))
        turn: dict[str, Any] = _named({"role": "assistant", "content": content}, message.name)
        thought = message.reasoning_content or message.reasoning
        if thought:
            # Under the names templates read it by: Qwen3-style `reasoning_content`, gpt-oss
            # `thinking` (its analysis channel). Templates that read neither drop it, as meant.
            turn["reasoning_content"] = turn["thinking"] = thought
        if not calls:
            return turn
        if self.knows_tool_calls:
            turn["tool_calls"] = [_template_call(call_id, fn) for call_id, fn in calls]
        else:
            rendered = self.tool_format.write_calls(
                [(fn.name, _parsed_arguments(fn.arguments)) for _, fn in calls]
            )
            turn["content"] = f"{content}\n{rendered}" if content else rendered
        return turn

    def _tool_result(self, content: str, tool_call_id: str | None, name: str | None) -> dict[str, Any]:
        if self.knows_tool_calls:
            turn: dict[str, Any] = {"role": "tool", "content": content}
            if tool_call_id is not None:
                turn["tool_call_id"] = self.call_ids.fit(tool_call_id)
            return _named(turn, name)
        # Templates without tool support get the result as a user turn, in the model's format.
        return {"role": "user", "content": self.tool_format.write_result(content)}


def _with_markers(messages: list[Message]) -> tuple[list[Message], list[str]]:
    """The messages with a marker after the text of every part that carries a breakpoint, and the
    breakpoints' ttls in marker order."""
    ttls: list[str] = []
    marked: list[Message] = []
    for message in messages:
        content = getattr(message, "content", None)
        if not isinstance(content, list) or not any(
            getattr(part, "prompt_cache_breakpoint", None) for part in content
        ):
            marked.append(message)
            continue
        parts = []
        for part in content:
            breakpoint_ = getattr(part, "prompt_cache_breakpoint", None)
            if breakpoint_ is not None and isinstance(part, TextPart):
                parts.append(part.model_copy(update={"text": part.text + _MARKER.format(len(ttls))}))
                ttls.append(breakpoint_.ttl)
            else:
                parts.append(part)
        marked.append(message.model_copy(update={"content": parts}))
    return marked, ttls


def _add_to_system(turns: list[dict[str, Any]], text: str, separator: str = "\n\n") -> None:
    """`text` after what the leading system turn holds (a system turn made when there is none)."""
    if turns and turns[0]["role"] == "system":
        held = turns[0]["content"]
        turns[0]["content"] = f"{held}{separator}{text}" if held else text
    else:
        turns.insert(0, {"role": "system", "content": text})


def _fold_system(turns: list[dict[str, Any]]) -> None:
    """The leading system turn's text moved to the start of the first user turn."""
    system = turns.pop(0)["content"]
    if turns and turns[0]["role"] == "user":
        turns[0]["content"] = f"{system}\n\n{turns[0]['content']}" if system else turns[0]["content"]
    elif system:
        turns.insert(0, {"role": "user", "content": system})


def _named(turn: dict[str, Any], name: str | None) -> dict[str, Any]:
    if name is not None:
        turn["name"] = name
    return turn


def _text(content: str | list[TextPart]) -> str:
    if isinstance(content, str):
        return content
    return PART_SEPARATOR.join(part.text for part in content)


def _user_content(message: UserMessage, index: int, media: RequestMedia | None) -> str | list[dict[str, Any]]:
    """The user turn's text; where it holds images or audio, the list of its items as multimodal
    templates read them ({"type": "text", "text": ...}, {"type": "image"}, {"type": "audio"}),
    adjacent text joined."""
    if isinstance(message.content, str):
        return message.content
    items: list[dict[str, Any]] = []
    for part_index, part in enumerate(message.content):
        if isinstance(part, TextPart):
            pieces: list[Any] = [part.text]
        elif media is not None and (index, part_index) in media.parts:
            pieces = media.parts[(index, part_index)]
        else:
            raise UnsupportedParameter(
                f"messages[{index}].content[{part_index}]",
                f"is a '{part.type}' content part, which is not read here",
            )
        for piece in pieces:
            if not isinstance(piece, str):
                items.append({"type": piece.kind})
            elif items and items[-1]["type"] == "text":
                items[-1]["text"] += PART_SEPARATOR + piece
            else:
                items.append({"type": "text", "text": piece})
    if any(item["type"] != "text" for item in items):
        return items
    return items[0]["text"] if items else ""


def _assistant_text(message: AssistantMessage) -> str:
    if message.content is None:
        return message.refusal or ""
    if isinstance(message.content, str):
        return message.content
    return PART_SEPARATOR.join(p.refusal if isinstance(p, RefusalPart) else p.text for p in message.content)


def _parsed_arguments(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments


def _template_call(call_id: str | None, fn: FunctionCall) -> dict[str, Any]:
    # Templates expect the arguments as an object, not the JSON string of the wire format.
    call: dict[str, Any] = {
        "type": "function",
        "function": {"name": fn.name, "arguments": _parsed_arguments(fn.arguments)},
    }
    if call_id is not None:
        call["id"] = call_id
    return call
