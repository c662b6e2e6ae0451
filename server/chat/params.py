"""Request + model defaults -> engine SamplingParams; refuses what this server cannot do."""

from __future__ import annotations

from dataclasses import dataclass

from server.config import SamplingDefaults
from server.engine.types import SamplingParams
from server.protocol.errors import ContextLengthExceeded, InvalidRequest, UnsupportedParameter
from server.protocol.request import AssistantMessage, ChatCompletionRequest, CustomToolCall, Message


@dataclass(slots=True, frozen=True)
class ModelLimits:
    context_length: int
    vocab_size: int
    stop_token_ids: frozenset[int]
    defaults: SamplingDefaults
    max_token_chars: int = 1  # the most characters one token of the vocabulary stands for


def refuse_unsupported(request: ChatCompletionRequest) -> None:
    """Fields the server parses but cannot honour yet: a 400 naming them, never silently ignored.

    Values that ask for nothing beyond the default (`modalities: ["text"]`) are accepted. Tools and
    response formats are checked where they are built (`chat/constraints.py`).
    """
    if request.modalities is not None and "audio" in request.modalities:
        raise UnsupportedParameter(
            "modalities", "cannot include 'audio': the served models produce text only"
        )
    if request.audio is not None:
        raise UnsupportedParameter("audio", "is not supported: the served models produce text only")
    if request.web_search_options is not None:
        raise UnsupportedParameter("web_search_options", "is not supported: this server has no web search")
    if request.moderation is not None:
        raise UnsupportedParameter("moderation", "is not supported: this server has no moderation model")
    for index, message in enumerate(request.messages):
        for call_index, call in enumerate(_tool_calls(message)):
            if isinstance(call, CustomToolCall):
                raise UnsupportedParameter(
                    f"messages[{index}].tool_calls[{call_index}]",
                    "is a 'custom' tool call; this server supports 'function' tools only",
                )
    if request.stream_options is not None and not request.stream:
        raise InvalidRequest(
            "'stream_options' is only allowed when 'stream' is true.", param="stream_options"
        )
    if request.top_logprobs is not None and not request.logprobs:
        raise InvalidRequest("'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs")


def prediction_text(request: ChatCompletionRequest) -> str | None:
    """The text of the request's `prediction` (its parts joined), or None without one."""
    prediction = request.prediction
    if prediction is None:
        return None
    content = prediction.content
    return content if isinstance(content, str) else "".join(part.text for part in content)


def refuse_obviously_too_long(request: ChatCompletionRequest, limits: ModelLimits) -> None:
    """A prompt whose text alone must be more tokens than the context holds is refused before the
    template is rendered or anything tokenized (both take seconds for megabytes of text)."""
    chars = sum(_message_chars(message) for message in request.messages)
    at_least = chars // max(1, limits.max_token_chars)
    wanted = request.max_completion_tokens or request.max_tokens or 1
    if at_least + wanted > limits.context_length:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {limits.context_length} tokens. However, you requested "
            f"at least {at_least + wanted} tokens (at least {at_least} in the messages, which hold {chars} "
            f"characters, {wanted} in the completion). Please reduce the length of the messages or "
            "completion.",
            param="messages",
        )


def _message_chars(message: Message) -> int:
    content = getattr(message, "content", None)
    if isinstance(content, str):
        chars = len(content)
    elif isinstance(content, list):
        chars = sum(
            len(getattr(part, "text", None) or getattr(part, "refusal", None) or "") for part in content
        )
    else:
        chars = 0
    for call in _tool_calls(message):
        chars += len(call.custom.input if isinstance(call, CustomToolCall) else call.function.arguments)
    return chars


def _tool_calls(message: Message) -> list:
    return (message.tool_calls or []) if isinstance(message, AssistantMessage) else []


def completion_budget(request: ChatCompletionRequest, limits: ModelLimits, prompt_tokens: int) -> int:
    requested = request.max_completion_tokens or request.max_tokens or limits.defaults.max_tokens
    room = limits.context_length - prompt_tokens
    if requested is None:
        if room >= 1:
            return room
        requested = 1
    if prompt_tokens + requested > limits.context_length:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {limits.context_length} tokens. However, you requested "
            f"{prompt_tokens + requested} tokens ({prompt_tokens} in the messages, {requested} in the "
            "completion). Please reduce the length of the messages or completion.",
            param="messages",
        )
    return requested


def _logit_bias(request: ChatCompletionRequest, vocab_size: int) -> tuple[tuple[int, float], ...]:
    pairs: list[tuple[int, float]] = []
    for key, value in (request.logit_bias or {}).items():
        token_id = int(key)
        if not 0 <= token_id < vocab_size:
            raise InvalidRequest(
                f"Invalid key in 'logit_bias': token id {token_id} is outside this model's vocabulary "
                f"(0..{vocab_size - 1}).",
                param="logit_bias",
            )
        pairs.append((token_id, float(value)))
    return tuple(pairs)


def choice_seed(seed: int | None, index: int) -> int | None:
    """Choices of one request draw from different streams; the same seed repeats all of them."""
    if seed is None:
        return None
    return (seed + index * 0x9E3779B97F4A7C15) % 2**64


def sampling_params(
    request: ChatCompletionRequest, limits: ModelLimits, prompt_tokens: int, index: int
) -> SamplingParams:
    defaults = limits.defaults

    def pick(value: float | None, default: float | None, fallback: float) -> float:
        return float(value if value is not None else default if default is not None else fallback)

    return SamplingParams(
        max_tokens=completion_budget(request, limits, prompt_tokens),
        temperature=pick(request.temperature, defaults.temperature, 1.0),
        top_p=pick(request.top_p, defaults.top_p, 1.0),
        presence_penalty=pick(request.presence_penalty, defaults.presence_penalty, 0.0),
        frequency_penalty=pick(request.frequency_penalty, defaults.frequency_penalty, 0.0),
        logit_bias=_logit_bias(request, limits.vocab_size),
        seed=choice_seed(request.seed, index),
        top_logprobs=(request.top_logprobs or 0) if request.logprobs else None,
        stop_token_ids=limits.stop_token_ids,
    )
