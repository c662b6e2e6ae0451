"""The Chat Completions request body, every field of the API reference, typed and range-checked."""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from server.protocol.errors import printable

logger = logging.getLogger(__name__)

FunctionName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _History(BaseModel):
    """An object inside `messages`: keys this server does not know are dropped, not refused.

    Clients send a response's message back as history as they received it, with what their
    library added: LiteLLM's `provider_specific_fields`, openai-python's `parsed` and
    `parsed_arguments`, a stream accumulator's `tool_calls[].index`. Known keys keep their strict
    types; the top level of the request stays strict.
    """

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _note_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and logger.isEnabledFor(logging.DEBUG):
            fields = cls.model_fields
            known = set(fields) | {field.alias for field in fields.values() if field.alias}
            unknown = sorted(printable(str(key), 64) for key in data.keys() - known)
            if unknown:
                logger.debug("dropped keys unknown in %s: %s", cls.__name__, ", ".join(unknown))
        return data


# --- content parts ---------------------------------------------------------------------------


class CacheBreakpoint(_Wire):
    """Pins the prompt's KV up to the end of the part it sits on, for at least `ttl`."""

    mode: Literal["explicit"]
    ttl: Literal["30m", "12h"] = "30m"


class _Part(_History):
    prompt_cache_breakpoint: CacheBreakpoint | None = None


class TextPart(_Part):
    type: Literal["text"]
    text: str


class ImageURL(_History):
    url: str
    detail: Literal["auto", "low", "high", "original"] = "auto"


class ImagePart(_Part):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(_History):
    data: str
    format: Literal["wav", "mp3"]


class AudioPart(_Part):
    type: Literal["input_audio"]
    input_audio: InputAudio


class FileData(_History):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class FilePart(_Part):
    type: Literal["file"]
    file: FileData


class RefusalPart(_History):
    type: Literal["refusal"]
    refusal: str


UserContentPart = Annotated[TextPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")]
AssistantContentPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]


# --- messages --------------------------------------------------------------------------------


class FunctionCall(_History):
    name: str
    arguments: str


class ToolCall(_History):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class CustomCallInput(_History):
    name: str
    input: str


class CustomToolCall(_History):
    id: str
    type: Literal["custom"]
    custom: CustomCallInput


def _call_kind(value: Any) -> str:
    kind = value.get("type", "function") if isinstance(value, dict) else getattr(value, "type", "function")
    return "custom tool call" if kind == "custom" else "function tool call"


# A call without `type` is a function call (as before custom calls existed): a plain `type`
# discriminator would refuse it for the missing tag.
AnyToolCall = Annotated[
    Annotated[ToolCall, Tag("function tool call")] | Annotated[CustomToolCall, Tag("custom tool call")],
    Discriminator(_call_kind),
]


class AssistantAudioRef(_History):
    id: str


class DeveloperMessage(_History):
    role: Literal["developer"]
    content: str | list[TextPart]
    name: str | None = None


class SystemMessage(_History):
    role: Literal["system"]
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(_History):
    role: Literal["user"]
    content: str | list[UserContentPart]
    name: str | None = None


class AssistantMessage(_History):
    role: Literal["assistant"]
    content: str | list[AssistantContentPart] | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: list[AnyToolCall] | None = None
    function_call: FunctionCall | None = None
    audio: AssistantAudioRef | None = None
    # Output-only citations, present when a client sends a response's message back as history
    # (`messages.append(completion.choices[0].message)`); they do not change the prompt.
    annotations: list[dict[str, Any]] | None = None
    # The turn's thinking, as reasoning clients send it back (vLLM and OpenRouter name it
    # `reasoning`; DeepSeek, the Vercel AI SDK and OpenCode `reasoning_content`).
    reasoning: str | None = None
    reasoning_content: str | None = None


class ToolMessage(_History):
    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str
    # Not in the API reference, but what the OpenAI Cookbook and LiteLLM's docs send; templates
    # that name tool results read it.
    name: str | None = None


class FunctionMessage(_History):
    role: Literal["function"]
    content: str | None
    name: str


Message = Annotated[
    DeveloperMessage | SystemMessage | UserMessage | AssistantMessage | ToolMessage | FunctionMessage,
    Field(discriminator="role"),
]


# --- tools, functions, formats ---------------------------------------------------------------


class FunctionDefinition(_Wire):
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Wire):
    type: Literal["function"]
    function: FunctionDefinition


class CustomToolDefinition(_Wire):
    name: FunctionName
    description: str | None = None
    format: dict[str, Any] | None = None


class CustomTool(_Wire):
    """A tool whose input is free text (or text in a grammar): parsed so it can be refused by name."""

    type: Literal["custom"]
    custom: CustomToolDefinition


AnyTool = Annotated[Tool | CustomTool, Field(discriminator="type")]


class NamedFunction(_Wire):
    name: str


class NamedToolChoice(_Wire):
    type: Literal["function"]
    function: NamedFunction


class NamedCustomToolChoice(_Wire):
    type: Literal["custom"]
    custom: NamedFunction


class AllowedTools(_Wire):
    mode: Literal["auto", "required"]
    tools: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=128)]


class AllowedToolsChoice(_Wire):
    type: Literal["allowed_tools"]
    allowed_tools: AllowedTools


ToolChoiceObject = Annotated[
    NamedToolChoice | NamedCustomToolChoice | AllowedToolsChoice, Field(discriminator="type")
]


class ResponseFormatText(_Wire):
    type: Literal["text"]


class ResponseFormatJSONObject(_Wire):
    type: Literal["json_object"]


class JSONSchemaFormat(_Wire):
    name: FunctionName
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ResponseFormatJSONSchema(_Wire):
    type: Literal["json_schema"]
    json_schema: JSONSchemaFormat


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJSONObject | ResponseFormatJSONSchema, Field(discriminator="type")
]


class PredictionContent(_Wire):
    type: Literal["content"]
    content: str | list[TextPart]


class AudioOutput(_Wire):
    format: Literal["wav", "aac", "mp3", "flac", "opus", "pcm16"]
    voice: str


class ApproximateLocation(_Wire):
    city: str | None = None
    country: str | None = None
    region: str | None = None
    timezone: str | None = None


class UserLocation(_Wire):
    type: Literal["approximate"]
    approximate: ApproximateLocation


class WebSearchOptions(_Wire):
    search_context_size: Literal["low", "medium", "high"] | None = None
    user_location: UserLocation | None = None


class StreamOptions(_Wire):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class PromptCacheOptions(_Wire):
    mode: Literal["implicit", "explicit"] = "implicit"
    ttl: Literal["30m"] = "30m"


class ModerationMode(_Wire):
    mode: Literal["score", "block"]


class ModerationPolicy(_Wire):
    input: ModerationMode | None = None
    output: ModerationMode | None = None


class Moderation(_Wire):
    model: str
    policy: ModerationPolicy | None = None


# --- the request -----------------------------------------------------------------------------


def check_metadata(value: dict[str, str] | None) -> dict[str, str] | None:
    if value is None:
        return value
    if len(value) > 16:
        raise ValueError("at most 16 key-value pairs are allowed")
    for key, item in value.items():
        if len(key) > 64:
            raise ValueError(f"key {key[:20]!r}... is longer than 64 characters")
        if len(item) > 512:
            raise ValueError(f"the value of {key!r} is longer than 512 characters")
    return value


def _check_stop(value: str | list[str] | None) -> str | list[str] | None:
    items = [value] if isinstance(value, str) else value or []
    if any(item == "" for item in items):
        raise ValueError("stop sequences must not be empty")
    return value


# A token id as a key: ASCII digits only (`str.isdigit` and `int` also take "²" and "١"), and few
# enough of them that `int` never meets Python's limit on digits.
_TOKEN_ID_KEY = re.compile(r"-?[0-9]{1,20}", re.ASCII)


def _check_logit_bias(value: dict[str, float] | None) -> dict[str, float] | None:
    for key, bias in (value or {}).items():
        if not _TOKEN_ID_KEY.fullmatch(key):
            raise ValueError(f"keys are token ids (decimal integers); {printable(key, 40)!r} is not one")
        if not -100 <= bias <= 100:
            raise ValueError(f"bias for token {key} must be between -100 and 100")
    return value


Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class ChatCompletionRequest(_Wire):
    messages: Annotated[list[Message], Field(min_length=1)]
    model: str
    audio: AudioOutput | None = None
    frequency_penalty: Penalty | None = None
    function_call: Literal["none", "auto"] | NamedFunction | None = None
    functions: Annotated[list[FunctionDefinition], Field(max_length=128)] | None = None
    logit_bias: Annotated[dict[str, float] | None, AfterValidator(_check_logit_bias)] = None
    logprobs: bool | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    metadata: Annotated[dict[str, str] | None, AfterValidator(check_metadata)] = None
    modalities: list[Literal["text", "audio"]] | None = None
    moderation: Moderation | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    parallel_tool_calls: bool | None = None
    prediction: PredictionContent | None = None
    presence_penalty: Penalty | None = None
    prompt_cache_key: Annotated[str, Field(max_length=1024)] | None = None
    prompt_cache_options: PromptCacheOptions | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    response_format: ResponseFormat | None = None
    safety_identifier: Annotated[str, Field(max_length=128)] | None = None
    seed: Annotated[int, Field(ge=-(2**63), lt=2**64)] | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority", "fast"] | None = None
    stop: Annotated[
        str | Annotated[list[str], Field(min_length=1, max_length=4)] | None, AfterValidator(_check_stop)
    ] = None
    store: bool | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceObject | None = None
    tools: Annotated[list[AnyTool], Field(max_length=128)] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    user: str | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    web_search_options: WebSearchOptions | None = None

    @property
    def stop_sequences(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)
