"""`store: true`: the completion, once fully generated, becomes a StoredCompletion, saved before the
response ends.

A stream the client abandons is not stored: what it would hold is a completion nobody received.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk

from server.chat import aggregate
from server.chat.templating import PART_SEPARATOR
from server.protocol.errors import StoreFailed
from server.protocol.request import ChatCompletionRequest
from server.storage.records import StoredCompletion
from server.storage.writer import StoreWriteError

# Request parameters kept with a stored completion (and shown on it, as OpenAI does).
STORED_PARAMS = (
    "temperature",
    "top_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "stop",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "response_format",
    "stream",
    "safety_identifier",
    "prompt_cache_key",
)
# Fields a stored chat.completion object carries beyond the response itself.
SHOWN_PARAMS = (
    "tool_choice",
    "seed",
    "top_p",
    "temperature",
    "presence_penalty",
    "frequency_penalty",
    "tools",
    "response_format",
)


async def recorded(
    chunks: AsyncIterator[ChatCompletionChunk], save: Callable[[list[ChatCompletionChunk]], Awaitable[None]]
) -> AsyncIterator[ChatCompletionChunk]:
    """Passes the chunks through; when they run out (not when the consumer stops early) awaits
    `save` of them all before ending, so the response ends (its body, or `[DONE]`) once the
    completion is stored. A failed save ends it with StoreFailed instead."""
    seen: list[ChatCompletionChunk] = []
    async for chunk in chunks:
        seen.append(chunk)
        yield chunk
    try:
        await save(seen)
    except StoreWriteError as exc:
        raise StoreFailed(f"The completion was generated but not stored: {exc}. Retry the request.") from exc


def record_builder(
    request: ChatCompletionRequest, chunks: list[ChatCompletionChunk], project: str
) -> Callable[[], StoredCompletion]:
    """The record of a finished completion, built later, on the writer thread."""
    return lambda: stored_record(request, aggregate.fold_all(chunks), project)


def stored_record(
    request: ChatCompletionRequest, completion: ChatCompletion, project: str
) -> StoredCompletion:
    dumped = request.model_dump(mode="json", by_alias=True, exclude_none=True)
    params = {key: dumped[key] for key in STORED_PARAMS if key in dumped}
    return StoredCompletion(
        id=completion.id,
        created=completion.created,
        model=completion.model,
        completion=completion.model_dump(mode="json", exclude_unset=True),
        messages=dumped["messages"],
        params={**params, "user": request.user} if request.user is not None else params,
        metadata=dict(request.metadata or {}),
        project=project,
    )


def stored_object(record: StoredCompletion) -> dict[str, Any]:
    """The chat.completion object of a stored completion, with its request parameters and metadata."""
    shown = {key: record.params.get(key) for key in SHOWN_PARAMS}
    return {
        **record.completion,
        **shown,
        "input_user": record.params.get("user"),
        "safety_identifier": record.params.get("safety_identifier"),
        "metadata": record.metadata,
    }


def stored_messages(record: StoredCompletion) -> list[dict[str, Any]]:
    """The request's messages as chat.completion.message list items (ids `<completion id>-<index>`)."""
    items = []
    for index, message in enumerate(record.messages):
        content = message.get("content")
        parts = content if isinstance(content, list) else None
        if parts is not None:
            content = PART_SEPARATOR.join(
                p.get("text", "") or p.get("refusal", "") for p in parts if isinstance(p, dict)
            )
        item = {**message, "id": f"{record.id}-{index}", "content": content, "content_parts": parts}
        item.setdefault("name", None)
        items.append(item)
    return items
