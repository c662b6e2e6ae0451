"""fold(chunks) -> ChatCompletion: the only builder of non-stream responses."""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass, field

from openai.types.chat import ChatCompletion, ChatCompletionMessage, ChatCompletionTokenLogprob
from openai.types.chat.chat_completion import Choice, ChoiceLogprobs
from openai.types.chat.chat_completion_chunk import ChatCompletionChunk, ChoiceDelta
from openai.types.chat.chat_completion_message import FunctionCall
from openai.types.chat.chat_completion_message_function_tool_call import (
    ChatCompletionMessageFunctionToolCall,
    Function,
)
from openai.types.completion_usage import CompletionUsage


@dataclass(slots=True)
class _Call:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _ChoiceFold:
    texts: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    logprobs: list[ChatCompletionTokenLogprob] | None = None
    finish: str | None = None
    calls: dict[int, _Call] = field(default_factory=dict)
    function_call: _Call | None = None

    def add(self, delta: ChoiceDelta) -> None:
        if delta.content:
            self.texts.append(delta.content)
        if getattr(delta, "reasoning", None):
            self.reasoning.append(delta.reasoning)  # type: ignore[attr-defined]
        for part in delta.tool_calls or []:
            call = self.calls.setdefault(part.index, _Call())
            call.id = part.id or call.id
            if part.function is not None:
                call.name = part.function.name or call.name
                call.arguments.append(part.function.arguments or "")
        if delta.function_call is not None:
            self.function_call = self.function_call or _Call()
            self.function_call.name = delta.function_call.name or self.function_call.name
            self.function_call.arguments.append(delta.function_call.arguments or "")

    def message(self) -> ChatCompletionMessage:
        text = "".join(self.texts)
        called = bool(self.calls) or self.function_call is not None
        message = ChatCompletionMessage(
            role="assistant",
            # With a call or reasoning and no words besides, content is null, as OpenAI sends it.
            content=None if (called or self.reasoning) and not text.strip() else text,
            refusal=None,
            annotations=[],
        )
        if self.reasoning:  # under both names, as the deltas carry it
            message.reasoning = message.reasoning_content = "".join(self.reasoning)  # type: ignore[attr-defined]
        if self.calls:
            message.tool_calls = [
                ChatCompletionMessageFunctionToolCall(
                    id=call.id,
                    type="function",
                    function=Function(name=call.name, arguments="".join(call.arguments)),
                )
                for _, call in sorted(self.calls.items())
            ]
        if self.function_call is not None:
            fc = self.function_call
            message.function_call = FunctionCall(name=fc.name, arguments="".join(fc.arguments))
        return message


class CompletionFolder:
    """Chunks in, one by one; the ChatCompletion they add up to out."""

    def __init__(self) -> None:
        self._folds: dict[int, _ChoiceFold] = {}
        self._usage: CompletionUsage | None = None
        self._head: ChatCompletionChunk | None = None

    def add(self, chunk: ChatCompletionChunk) -> None:
        self._head = self._head or chunk
        if chunk.usage is not None:
            self._usage = chunk.usage
        for c in chunk.choices:
            state = self._folds.setdefault(c.index, _ChoiceFold())
            state.add(c.delta)
            if c.logprobs is not None and c.logprobs.content is not None:
                state.logprobs = (state.logprobs or []) + c.logprobs.content
            if c.finish_reason is not None:
                state.finish = c.finish_reason

    def result(self) -> ChatCompletion:
        head = self._head
        assert head is not None, "a chat stream always yields chunks"
        unfinished = [index for index, state in self._folds.items() if state.finish is None]
        assert not unfinished, f"choices {unfinished} ended without a finish_reason"
        choices = [
            Choice(
                index=index,
                message=state.message(),
                logprobs=ChoiceLogprobs(content=state.logprobs, refusal=None)
                if state.logprobs is not None
                else None,
                finish_reason=state.finish,  # type: ignore[arg-type]  # set by the choice's last chunk
            )
            for index, state in sorted(self._folds.items())
        ]
        return ChatCompletion(
            id=head.id,
            object="chat.completion",
            created=head.created,
            model=head.model,
            choices=choices,
            usage=self._usage,
            system_fingerprint=head.system_fingerprint,
            service_tier=head.service_tier,
        )


async def fold(chunks: AsyncIterable[ChatCompletionChunk]) -> ChatCompletion:
    folder = CompletionFolder()
    async for chunk in chunks:
        folder.add(chunk)
    return folder.result()


def fold_all(chunks: Iterable[ChatCompletionChunk]) -> ChatCompletion:
    folder = CompletionFolder()
    for chunk in chunks:
        folder.add(chunk)
    return folder.result()
