"""fold(chunks) -> ChatCompletion: the only builder of non-stream responses."""

from __future__ import annotations

from collections.abc import AsyncIterable

from openai.types.chat import ChatCompletion, ChatCompletionMessage, ChatCompletionTokenLogprob
from openai.types.chat.chat_completion import Choice, ChoiceLogprobs
from openai.types.chat.chat_completion_chunk import ChatCompletionChunk
from openai.types.completion_usage import CompletionUsage


async def fold(chunks: AsyncIterable[ChatCompletionChunk]) -> ChatCompletion:
    texts: dict[int, list[str]] = {}
    logprobs: dict[int, list[ChatCompletionTokenLogprob] | None] = {}
    finish: dict[int, str | None] = {}
    usage: CompletionUsage | None = None
    head: ChatCompletionChunk | None = None
    async for chunk in chunks:
        head = head or chunk
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            texts.setdefault(c.index, [])
            logprobs.setdefault(c.index, None)
            if c.delta.content:
                texts[c.index].append(c.delta.content)
            if c.logprobs is not None and c.logprobs.content is not None:
                logprobs[c.index] = (logprobs[c.index] or []) + c.logprobs.content
            if c.finish_reason is not None:
                finish[c.index] = c.finish_reason
    assert head is not None, "a chat stream always yields chunks"
    choices = [
        Choice(
            index=index,
            message=ChatCompletionMessage(
                role="assistant", content="".join(texts[index]), refusal=None, annotations=[]
            ),
            logprobs=ChoiceLogprobs(content=logprobs[index], refusal=None)
            if logprobs[index] is not None
            else None,
            finish_reason=finish.get(index) or "stop",  # type: ignore[arg-type]
        )
        for index in sorted(texts)
    ]
    return ChatCompletion(
        id=head.id,
        object="chat.completion",
        created=head.created,
        model=head.model,
        choices=choices,
        usage=usage,
        system_fingerprint=head.system_fingerprint,
        service_tier=head.service_tier,
    )
