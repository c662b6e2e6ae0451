"""ChatService.start(request) -> ChatStream: every 4xx is raised before the first byte is sent."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from openai.types.chat import ChatCompletionChunk
from openai.types.chat.chat_completion_chunk import Choice, ChoiceDelta, ChoiceLogprobs
from openai.types.completion_usage import CompletionTokensDetails, CompletionUsage, PromptTokensDetails

from server.api.errors import InternalError, RateLimited
from server.api.limits import check_limits
from server.api.schemas.request import ChatCompletionRequest
from server.chat.assembler import ChoiceAssembler, Delta
from server.chat.constraints import Constraint, build_constraint
from server.chat.detokenizer import IncrementalDecoder
from server.chat.params import refuse_unsupported, sampling_params
from server.chat.recording import record_builder, recorded
from server.chat.tool_stream import ChoiceDeltas, ToolCallDeltas
from server.config import RequestLimits
from server.constrained.mask import GrammarMask
from server.engine.engine import EngineStream
from server.engine.types import EngineRequest, FinishReason, QueueFull, StepOutput
from server.models.registry import ModelRegistry, ServedModel
from server.storage.writer import StoreWriter

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Header:
    id: str
    created: int
    model: str
    system_fingerprint: str
    service_tier: str
    include_usage: bool


class ChatStream:
    """The chunks of one chat completion. The last chunk always carries the usage (and no
    choices); `for_client()` drops it unless the request asked for `include_usage`."""

    def __init__(self, header: _Header, chunks: AsyncIterator[ChatCompletionChunk]) -> None:
        self.header = header
        self._chunks = chunks

    def __aiter__(self) -> AsyncIterator[ChatCompletionChunk]:
        return self._chunks

    async def for_client(self) -> AsyncIterator[ChatCompletionChunk]:
        async for chunk in self._chunks:
            if chunk.usage is not None and not self.header.include_usage:
                continue
            yield chunk

    async def aclose(self) -> None:
        await self._chunks.aclose()  # type: ignore[attr-defined]


class ChatService:
    def __init__(
        self,
        registry: ModelRegistry,
        store_writer: StoreWriter | None = None,
        limits: RequestLimits | None = None,
    ) -> None:
        self._registry = registry
        self._store_writer = store_writer
        self._limits = limits or RequestLimits()

    async def start(self, request: ChatCompletionRequest, project: str = "") -> ChatStream:
        """`project`: the caller's project (its API key's); stored completions belong to it."""
        check_limits(request, self._limits)
        served = self._registry.get(request.model)
        refuse_unsupported(request)
        n = request.n or 1
        # Compiling a schema takes about a millisecond, a large one far longer: off the event loop.
        constraint, masks = await asyncio.to_thread(_constrain, request, served, n)
        prompt = served.templater.render(request.messages, constraint.tools.tools if constraint.tools else ())
        base_id = uuid.uuid4().hex
        engine_requests = [
            EngineRequest(
                request_id=f"{base_id}-{i}",
                prompt_token_ids=prompt.token_ids,
                params=sampling_params(request, served.limits, len(prompt.token_ids), i),
                mask_fn=masks[i],
            )
            for i in range(n)
        ]
        header = _Header(
            id=f"chatcmpl-{base_id}",
            created=int(time.time()),
            model=served.spec.id,
            system_fingerprint=served.fingerprint,
            service_tier="default" if request.service_tier in (None, "auto") else request.service_tier,
            include_usage=bool(request.stream_options and request.stream_options.include_usage),
        )
        assemblers = [
            ChoiceAssembler(
                IncrementalDecoder(served.tokenizer),
                served.tokens,
                request.stop_sequences,
                bool(request.logprobs),
            )
            for _ in range(n)
        ]
        logger.info(
            "%s: model=%s n=%d stream=%s prompt_tokens=%d max_tokens=%d user=%s",
            header.id,
            header.model,
            n,
            bool(request.stream),
            len(prompt.token_ids),
            engine_requests[0].params.max_tokens,
            request.user,
        )
        try:
            stream = served.engine.stream(engine_requests)
        except QueueFull as exc:
            raise RateLimited(f"The server is busy ({exc}); retry shortly.") from exc
        shapers = [_shaper(constraint) for _ in range(n)]
        chunks = _generate(header, stream, assemblers, shapers, len(prompt.token_ids))
        if request.store and self._store_writer is not None:
            writer = self._store_writer
            chunks = recorded(chunks, lambda seen: writer.submit(record_builder(request, seen, project)))
        return ChatStream(header, chunks)


def _constrain(
    request: ChatCompletionRequest, served: ServedModel, n: int
) -> tuple[Constraint, list[GrammarMask | None]]:
    """The request's grammar, compiled (a 400 if it cannot be enforced), and one mask per choice."""
    constraint = build_constraint(request, served.grammars, served.tool_parser)
    if constraint.grammar is None:
        return constraint, [None] * n
    return constraint, [served.grammars.mask(constraint.grammar) for _ in range(n)]


def _shaper(constraint: Constraint) -> ChoiceDeltas:
    if constraint.tools is None or constraint.parser is None:
        return ChoiceDeltas()
    return ToolCallDeltas(constraint.parser(), constraint.tools.legacy_functions)


async def _generate(
    header: _Header,
    stream: EngineStream,
    assemblers: list[ChoiceAssembler],
    shapers: list[ChoiceDeltas],
    prompt_tokens: int,
) -> AsyncIterator[ChatCompletionChunk]:
    build = _ChunkBuilder(header)
    completion_tokens = [0] * len(assemblers)
    cached_tokens = 0
    try:
        for index in range(len(assemblers)):
            yield build.choice(index, ChoiceDelta(role="assistant", content=""))
        async for index, out in stream:
            if out.error is not None:
                raise InternalError(f"Generation failed: {out.error}")
            if out.prompt_tokens and index == 0:
                cached_tokens = out.cached_tokens
            assembler = assemblers[index]
            delta, finish = _step(assembler, out)
            if out.token is not None:
                completion_tokens[index] += 1
            if delta.stopped:
                stream.abort(index)
                finish = "stop"
            shaper = shapers[index]
            deltas = shaper.feed(delta.text) + (shaper.finish() if finish is not None else [])
            if not deltas and delta.logprobs:
                deltas = [ChoiceDelta(content="")]
            for position, choice_delta in enumerate(deltas):
                yield build.choice(index, choice_delta, delta.logprobs if position == 0 else None)
            if finish is not None:
                yield build.choice(index, ChoiceDelta(), finish_reason=shaper.finish_reason(finish))
    finally:
        stream.close()
    yield build.usage(prompt_tokens, sum(completion_tokens), cached_tokens)


def _step(assembler: ChoiceAssembler, out: StepOutput) -> tuple[Delta, str | None]:
    """Feeds one engine output to the choice's assembler: its delta and finish reason, if any."""
    reason = out.finish_reason
    if reason is FinishReason.ABORT:
        raise InternalError("Generation was cancelled by the server.")
    delta = Delta()
    if out.token is not None and reason is not FinishReason.STOP:  # an EOS token has no text
        delta = assembler.feed(out.token)
    if reason is None or delta.stopped:
        return delta, None
    tail = assembler.finish()
    merged = Delta(delta.text + tail.text, delta.logprobs + tail.logprobs, tail.stopped)
    return merged, "stop" if reason is FinishReason.STOP or tail.stopped else "length"


class _ChunkBuilder:
    def __init__(self, header: _Header) -> None:
        self._header = header

    def _chunk(self, choices: list[Choice], usage: CompletionUsage | None) -> ChatCompletionChunk:
        h = self._header
        chunk = ChatCompletionChunk(
            id=h.id,
            object="chat.completion.chunk",
            created=h.created,
            model=h.model,
            system_fingerprint=h.system_fingerprint,
            service_tier=h.service_tier,  # type: ignore[arg-type]
            choices=choices,
        )
        if h.include_usage or usage is not None:
            chunk.usage = usage
        return chunk

    def choice(
        self,
        index: int,
        delta: ChoiceDelta,
        logprobs: list | None = None,
        finish_reason: str | None = None,
    ) -> ChatCompletionChunk:
        choice_logprobs = ChoiceLogprobs(content=logprobs, refusal=None) if logprobs else None
        choice = Choice(index=index, delta=delta, logprobs=choice_logprobs, finish_reason=finish_reason)  # type: ignore[arg-type]
        return self._chunk([choice], None)

    def usage(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> ChatCompletionChunk:
        usage = CompletionUsage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens, audio_tokens=0),
            completion_tokens_details=CompletionTokensDetails(
                reasoning_tokens=0, audio_tokens=0, accepted_prediction_tokens=0, rejected_prediction_tokens=0
            ),
        )
        return self._chunk([], usage)
