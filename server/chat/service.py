"""ChatService.start(request) -> ChatStream: every 4xx is raised before the first byte is sent."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from openai.types.chat import ChatCompletionChunk
from openai.types.chat.chat_completion_chunk import Choice, ChoiceDelta, ChoiceLogprobs
from openai.types.completion_usage import CompletionTokensDetails, CompletionUsage, PromptTokensDetails

from server.chat.assembler import ChoiceAssembler
from server.chat.choice import ChoicePipeline
from server.chat.constraints import Constraint, build_constraint, reasoning_first
from server.chat.deltas import OutputDeltas, ParsedDeltas
from server.chat.detokenizer import IncrementalDecoder
from server.chat.observer import RequestObserver
from server.chat.params import prediction_text, refuse_obviously_too_long, refuse_unsupported, sampling_params
from server.chat.prompt_cache import cache_policy, check_breakpoints
from server.chat.recording import record_builder, recorded
from server.chat.registry import ModelRegistry
from server.chat.served_model import ServedModel
from server.chat.templating import Prompt
from server.chat.tools import plan_tools
from server.config import MediaSettings, RequestLimits
from server.constrained.mask import GrammarMask
from server.engine.engine import EngineStream
from server.engine.media import PromptMedia
from server.engine.types import EngineRequest, QueueFull
from server.media.fetch import SafeFetcher
from server.media.parts import MediaTarget, RequestMedia, read_media
from server.metrics import Metrics
from server.parsers.reasoning import OPEN as THINK_OPEN
from server.parsers.reasoning import OutputParser, reasoning_parser
from server.protocol.errors import RateLimited, UnsupportedParameter
from server.protocol.limits import check_limits
from server.protocol.request import ChatCompletionRequest, TextPart, UserMessage
from server.storage.writer import StoreWriter

logger = logging.getLogger(__name__)

# The tier a response reports for the one asked for: every tier runs the same here; `fast` is
# reported as `priority`, as OpenAI does.
_SERVICE_TIERS = {"auto": "default", "fast": "priority"}
_MEDIA_THREADS = 16  # requests fetching and decoding media at once


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
    choices); `for_client()` drops it unless the request asked for `include_usage`.

    Nothing is produced before the request has its place in the batch: `admitted()` waits for that
    and raises what refused it instead (429 once it waited past the queue's limit), so a stream's
    status line can still tell."""

    def __init__(self, header: _Header, chunks: AsyncIterator[ChatCompletionChunk]) -> None:
        self.header = header
        self._chunks = chunks
        self._first: ChatCompletionChunk | None = None
        self._admitted = False

    async def admitted(self) -> None:
        if self._admitted:
            return
        self._admitted = True
        self._first = await self._chunks.__anext__()  # the generator always yields at least one

    def __aiter__(self) -> AsyncIterator[ChatCompletionChunk]:
        return self._all()

    async def _all(self) -> AsyncIterator[ChatCompletionChunk]:
        await self.admitted()
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        async for chunk in self._chunks:
            yield chunk

    async def for_client(self) -> AsyncIterator[ChatCompletionChunk]:
        async for chunk in self:
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
        *,
        request_timeout_s: float | None = None,
        metrics: Metrics | None = None,
        log_content: bool = False,
        media: MediaSettings | None = None,
    ) -> None:
        self._registry = registry
        self._fetcher = SafeFetcher(media or MediaSettings())
        self._media_threads = ThreadPoolExecutor(_MEDIA_THREADS, thread_name_prefix="media")
        self._store_writer = store_writer
        self.limits = limits or RequestLimits()
        self._request_timeout_s = request_timeout_s
        self._metrics = metrics
        self._log_content = log_content

    async def start(self, request: ChatCompletionRequest, project: str = "") -> ChatStream:
        """`project`: the caller's project (its API key's); stored completions belong to it."""
        started = time.monotonic()
        check_limits(request, self.limits)
        served = await self._registry.acquire(request.model)  # loads it if it is not loaded
        try:
            return await self._start(request, project, served, started)
        except BaseException:
            self._registry.release(served)
            raise

    async def _start(
        self, request: ChatCompletionRequest, project: str, served: ServedModel, started: float
    ) -> ChatStream:
        refuse_unsupported(request)
        if request.verbosity is not None and not served.templater.reads_verbosity:
            raise UnsupportedParameter(
                "verbosity", "is not supported by this model: its chat template has no verbosity setting"
            )
        refuse_obviously_too_long(request, served.limits)
        check_breakpoints(request)
        n = request.n or 1
        # Compiling a grammar, rendering the template and tokenizing take milliseconds, seconds for
        # a large schema or prompt: off the event loop, which keeps serving every other request.
        request_media = None
        if _has_media(request):
            # Fetching an image may take up to server.media.timeout_s: on threads of its own, so
            # that slow URLs cannot hold the threads every other request's template is rendered on.
            request_media = await asyncio.get_running_loop().run_in_executor(
                self._media_threads, _read_media, request, served, self.limits, self._fetcher
            )
        constraint, masks, prompt, inside, prediction, media = await asyncio.to_thread(
            _prepare, request, served, n, request_media
        )
        base_id = uuid.uuid4().hex
        cache = cache_policy(request, prompt)
        engine_requests = [
            EngineRequest(
                request_id=f"{base_id}-{i}",
                prompt_token_ids=prompt.token_ids,
                params=sampling_params(request, served.limits, len(prompt.token_ids), i),
                mask_fn=masks[i],
                cache=cache,
                prediction=prediction,
                media=media,
            )
            for i in range(n)
        ]
        header = _Header(
            id=f"chatcmpl-{base_id}",
            created=int(time.time()),
            model=request.model,  # the name asked for (an alias stays an alias)
            system_fingerprint=served.fingerprint,
            service_tier=_SERVICE_TIERS.get(tier := request.service_tier or "auto", tier),
            include_usage=bool(request.stream_options and request.stream_options.include_usage),
        )
        logger.info(
            "%s: model=%s n=%d stream=%s prompt_tokens=%d max_tokens=%d",
            header.id,
            header.model,
            n,
            bool(request.stream),
            len(prompt.token_ids),
            engine_requests[0].params.max_tokens,
        )
        if self._log_content:
            logger.info("%s: prompt %r", header.id, prompt.text)
        deadline = None if self._request_timeout_s is None else started + self._request_timeout_s
        try:
            stream = served.engine.stream(engine_requests, deadline)
        except QueueFull as exc:
            raise RateLimited(f"The server is busy ({exc}); retry shortly.") from exc
        pipelines = [_pipeline(request, constraint, served, inside) for _ in range(n)]
        observer = RequestObserver(self._metrics, served.spec.id, started, n)
        audio_tokens = media.audio_rows if media is not None else 0
        chunks = _generate(header, stream, pipelines, len(prompt.token_ids), observer, audio_tokens)
        chunks = _released(chunks, lambda: self._registry.release(served))
        if self._log_content:
            chunks = _logged(header.id, chunks)
        if request.store and self._store_writer is not None:
            writer = self._store_writer
            chunks = recorded(chunks, lambda seen: writer.save(record_builder(request, seen, project)))
        return ChatStream(header, chunks)


def _prepare(
    request: ChatCompletionRequest, served: ServedModel, n: int, request_media: RequestMedia | None
) -> tuple[Constraint, list[GrammarMask | None], Prompt, bool, tuple[int, ...] | None, PromptMedia | None]:
    """The prompt (rendered with the tools, the reasoning setting and the request's media,
    tokenized, media expanded by the model's processor), the request's grammar, compiled (a 400
    if it cannot be enforced; free reasoning first where the model thinks), one mask per choice,
    whether the output starts inside a think block, and the prediction's tokens (the engine
    proposes them: speculative decoding)."""
    plan = plan_tools(request, served.templater.parallel_calls)
    thinking = served.reasoning.plan(request.reasoning_effort)
    variables = dict(thinking.template_kwargs)
    if request.verbosity is not None:
        variables["verbosity"] = request.verbosity
    tools = plan.tools if plan else ()
    prompt = served.templater.render(request.messages, tools, variables, thinking.system_flag, request_media)
    media = None
    if request_media is not None and request_media.items:
        assert served.media is not None  # read_media takes images and audio for such models only
        if prompt.breakpoints:
            raise UnsupportedParameter(
                "prompt_cache_breakpoint",
                "cannot be combined with image or audio parts yet: use automatic prompt caching",
            )
        prompt, media = served.media.attach(prompt, request_media)
    inside = served.reasoning.format in ("think", "granite") and prompt.text.rstrip().endswith(THINK_OPEN)
    first = reasoning_first(served.reasoning.format, thinking.thinks, inside, served.grammars.special_token)
    constraint = build_constraint(request, served.grammars, served.tool_parser, plan, first)
    masks: list[GrammarMask | None] = [None] * n
    if constraint.grammar is not None:
        masks = [served.grammars.mask(constraint.grammar) for _ in range(n)]
    text = prediction_text(request)
    prediction = None
    if text:
        ids = served.tokenizer.encode(text, add_special_tokens=False)
        prediction = tuple(ids[: served.limits.context_length])
    return constraint, masks, prompt, inside, prediction, media


def _has_media(request: ChatCompletionRequest) -> bool:
    return any(
        isinstance(m, UserMessage)
        and not isinstance(m.content, str)
        and any(not isinstance(p, TextPart) for p in m.content)
        for m in request.messages
    )


def _read_media(
    request: ChatCompletionRequest, served: ServedModel, limits: RequestLimits, fetcher: SafeFetcher
) -> RequestMedia:
    """The request's image, audio and file parts fetched and decoded (blocking)."""
    target = (
        served.media.target(served.spec.id)
        if served.media is not None
        else MediaTarget(served.spec.id, frozenset({"text"}))
    )
    return read_media(request.messages, target, limits, fetcher)


def _pipeline(
    request: ChatCompletionRequest, constraint: Constraint, served: ServedModel, inside: bool
) -> ChoicePipeline:
    """One choice's pipeline. The model's format is read where it matters: the tool parser when
    the request has tools, the reasoning parser for a reasoning model (`inside`: the prompt opened
    its think block), the answer after the reasoning going on to the tool parser."""
    tools = constraint.tools
    calls: OutputParser | None = None
    keep: frozenset[int] = frozenset()
    if tools is not None and constraint.parser is not None:
        calls, keep = constraint.parser(tools.tools), served.tool_tokens
    parser = calls
    if served.reasoning.format is not None:
        parser = reasoning_parser(served.reasoning.format, inside, tools.tools if tools else (), calls)
        keep = keep | served.reasoning_tokens
    output = OutputDeltas()
    if parser is not None:
        output = ParsedDeltas(
            parser,
            tools.legacy_functions if tools else False,
            served.templater.call_ids.new,
            streamed=bool(request.stream),
        )
    decoder = IncrementalDecoder(served.tokenizer, keep)  # the parsers' markers kept for them
    assembler = ChoiceAssembler(decoder, served.tokens, request.stop_sequences, bool(request.logprobs))
    return ChoicePipeline(assembler, output)


async def _generate(
    header: _Header,
    stream: EngineStream,
    pipelines: list[ChoicePipeline],
    prompt_tokens: int,
    observer: RequestObserver,
    audio_tokens: int = 0,
) -> AsyncIterator[ChatCompletionChunk]:
    """Nothing is yielded before the engine's first output: a refusal is raised before any chunk."""
    build = _ChunkBuilder(header)
    cached_tokens = 0
    announced = False
    try:
        async for index, out in stream:
            step = pipelines[index].step(out)
            if out.prompt_tokens and index == 0:
                cached_tokens = out.cached_tokens
                observer.admitted(out.prompt_tokens, out.cached_tokens)
            if not announced:
                announced = True
                for choice in range(len(pipelines)):
                    yield build.choice(choice, ChoiceDelta(role="assistant", content=""))
            if out.token is not None:
                observer.token(index)
            if step.stop_generating:
                stream.abort(index)
            for position, choice_delta in enumerate(step.deltas):
                yield build.choice(index, choice_delta, step.logprobs if position == 0 else None)
            if step.finish_reason is not None:
                observer.finished(step.ended_as or step.finish_reason)
                yield build.choice(index, ChoiceDelta(), finish_reason=step.finish_reason)
    finally:
        stream.close()
    yield build.usage(
        prompt_tokens,
        cached_tokens,
        audio_tokens,
        CompletionTokensDetails(
            reasoning_tokens=sum(p.reasoning_tokens for p in pipelines),
            audio_tokens=0,
            accepted_prediction_tokens=sum(p.accepted_prediction_tokens for p in pipelines),
            rejected_prediction_tokens=sum(p.rejected_prediction_tokens for p in pipelines),
        ),
        sum(p.completion_tokens for p in pipelines),
    )


async def _released(
    chunks: AsyncIterator[ChatCompletionChunk], release: Callable[[], None]
) -> AsyncIterator[ChatCompletionChunk]:
    """The model's lease given back once the completion ends, however it ends."""
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        release()


async def _logged(
    completion_id: str, chunks: AsyncIterator[ChatCompletionChunk]
) -> AsyncIterator[ChatCompletionChunk]:
    """`server.log_content`: the generated text of each choice, logged once it ends (debugging only)."""
    texts: dict[int, list[str]] = {}
    async for chunk in chunks:
        for choice in chunk.choices:
            if choice.delta.content:
                texts.setdefault(choice.index, []).append(choice.delta.content)
            if choice.finish_reason is not None:
                logger.info(
                    "%s: choice %d output %r",
                    completion_id,
                    choice.index,
                    "".join(texts.pop(choice.index, [])),
                )
        yield chunk


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

    def usage(
        self,
        prompt_tokens: int,
        cached_tokens: int,
        audio_tokens: int,
        details: CompletionTokensDetails,
        generated_tokens: int,
    ) -> ChatCompletionChunk:
        """As OpenAI counts them, rejected prediction tokens are completion tokens too (billed),
        beside the tokens generated."""
        completion_tokens = generated_tokens + (details.rejected_prediction_tokens or 0)
        usage = CompletionUsage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens, audio_tokens=audio_tokens),
            completion_tokens_details=details,
        )
        return self._chunk([], usage)
