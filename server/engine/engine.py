"""The engine loop: one thread owns the model and runs continuous batching.

Each pass: take new requests and aborts, let the scheduler plan the step, run one packed forward
pass over every scheduled sequence (prompt chunks and decode tokens together), sample each
sequence's next token with its own parameters, hand it to its consumer, retire finished ones
(their KV slot is free for the next step).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from server.engine.model_runner import ModelRunner
from server.engine.sampler import SequenceSampler, sample_batch
from server.engine.scheduler import Chunk, Scheduler, StepPlan
from server.engine.sequence import RequestGroup, SeqState, Sequence
from server.engine.speculation import proposer_for
from server.engine.types import (
    EngineConfig,
    EngineRequest,
    EngineStats,
    FinishReason,
    SampledToken,
    StepOutput,
    TokenMaskFn,
)

logger = logging.getLogger(__name__)

Sink = Callable[[StepOutput], None]


@dataclass(slots=True)
class _Consumer:
    sink: Sink
    mask_fn: TokenMaskFn | None = None
    sampler: SequenceSampler | None = None
    first_output_sent: bool = False


RunnerFactory = Callable[[], tuple[ModelRunner, EngineConfig]]


class Engine:
    """Thread-side engine. `submit` and `abort` may be called from any thread.

    The engine thread also builds the runner (loads the model): every torch operation of a model
    happens on one thread. Measured here, a model loaded on one thread and run on another ran
    1.5x slower, as OpenMP kept two thread teams competing for the cores.
    """

    def __init__(self, build: RunnerFactory, name: str = "engine") -> None:
        self._build = build
        self.runner: ModelRunner
        self.config: EngineConfig
        self.scheduler: Scheduler
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._name = name
        self._wake = threading.Condition()
        self._incoming: list[list[Sequence]] = []
        self._queued = 0  # sequences submitted but not yet handed to the scheduler
        self._aborts: set[str] = set()
        self._parking: dict[str, bool] = {}  # request id -> park (True) or resume (False), latest wins
        self._abort_everything = False
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._by_id: dict[str, Sequence] = {}
        # Grammar masks are computed here while the forward pass runs (llguidance drops the GIL).
        self._mask_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-masks")
        self.stats = EngineStats()
        self._proposed = 0  # proposed tokens verified since start (speculative decoding)
        self._accepted = 0

    def start(self) -> None:
        """Starts the engine thread; returns once the model is loaded, or raises why it was not."""
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure

    def _run(self) -> None:
        try:
            self.runner, self.config = self._build()
            self.scheduler = Scheduler(self.config)
        except BaseException as exc:
            self._failure = exc
            return
        finally:
            self._ready.set()
        self._loop()

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, requests: list[EngineRequest], sink: Sink) -> None:
        """Queues the requests (the choices of one chat request) together; raises QueueFull."""
        seqs = []
        now = time.monotonic()
        group = RequestGroup()
        for request in requests:
            seq = Sequence(
                request.request_id,
                list(request.prompt_token_ids),
                len(request.prompt_token_ids),
                request.params,
                enqueued_at=now,
                group=group,
                cache=request.cache,
                proposer=proposer_for(request, self.config),
                media=request.media,
            )
            # Its sampler (torch tensors) is made on the engine thread.
            seq.payload = _Consumer(sink, request.mask_fn)
            seqs.append(seq)
        with self._wake:
            self.scheduler.check_room(self.num_waiting, len(seqs))
            self._incoming.append(seqs)
            self._queued += len(seqs)
            self._wake.notify()

    def abort(self, request_id: str) -> None:
        with self._wake:
            self._aborts.add(request_id)
            self._wake.notify()

    def park(self, request_id: str, parked: bool) -> None:
        """Parks a sequence whose output is not being read (it leaves the batch and its slot), or
        resumes it; a sequence that already finished is left alone."""
        with self._wake:
            self._parking[request_id] = parked
            self._wake.notify()

    def abort_all(self) -> None:
        """Cancels every queued and running sequence (their consumers get FinishReason.ABORT)."""
        with self._wake:
            self._abort_everything = True
            self._wake.notify()

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting) + self._queued

    def _loop(self) -> None:
        scheduler = self.scheduler
        while True:
            with self._wake:
                while not (
                    self._stopped
                    or self._incoming
                    or self._aborts
                    or self._parking
                    or self._abort_everything
                    or scheduler.has_work()
                ):
                    self._wake.wait()
                if self._stopped:
                    break
                incoming, self._incoming, self._queued = self._incoming, [], 0
                aborts, self._aborts = self._aborts, set()
                parking, self._parking = self._parking, {}
                abort_everything, self._abort_everything = self._abort_everything, False
            for seqs in incoming:
                for seq in seqs:
                    seq.payload.sampler = SequenceSampler(
                        seq.params, self.runner.vocab_size, seq.payload.mask_fn
                    )
                    self._by_id[seq.request_id] = seq
                scheduler.add(seqs)
            if abort_everything:
                aborts.update(self._by_id)
            for request_id in aborts:
                aborted = self._by_id.get(request_id)
                if aborted is not None:
                    self._finish(aborted, FinishReason.ABORT)
            for request_id, parked in parking.items():
                reader = self._by_id.get(request_id)
                if reader is not None:
                    (scheduler.park if parked else scheduler.resume)(reader)
            for seq in scheduler.overdue(time.monotonic()):
                self._finish(seq, FinishReason.QUEUE_TIMEOUT, "waited too long for a place in the batch")
            if scheduler.has_work():
                try:
                    self._step()
                except BaseException:  # a bug (or a native panic) must not stop the engine thread
                    logger.exception("engine step failed; failing the requests in flight")
                    for seq in list(self._by_id.values()):
                        self._finish(seq, FinishReason.ERROR, "the engine failed on this step")
            self._publish_stats()
        for seq in list(self._by_id.values()):
            self._finish(seq, FinishReason.ABORT)
        self._mask_thread.shutdown(wait=False, cancel_futures=True)
        self.runner.cache.release()

    def _publish_stats(self) -> None:
        scheduler, cache = self.scheduler, self.runner.cache
        self.stats = EngineStats(
            running=len(scheduler.running),
            waiting=len(scheduler.waiting),
            parked=len(scheduler.parked),
            kv_tokens_used=sum(s.num_computed for s in scheduler.running),
            kv_tokens_allocated=cache.num_slots * cache.capacity,
            kv_bytes_allocated=cache.num_slots * cache.capacity * cache.bytes_per_token,
            kv_tokens_budget=self.config.max_kv_tokens,
            preemptions=scheduler.preemptions,
            pinned_tokens=scheduler.pins.pinned_tokens,
            pins_evicted=scheduler.pins.evicted,
            proposed_tokens=self._proposed,
            accepted_tokens=self._accepted,
        )

    def _step(self) -> None:
        plan = self.scheduler.schedule()
        if plan.empty:
            return
        started = time.perf_counter()
        for chunk in plan.chunks:
            if chunk.samples:
                chunk.seq.payload.sampler.start_mask(self._mask_thread)
        try:
            logits = self.runner.run(plan)
        except Exception as exc:  # a failed step fails its sequences, never the loop
            logger.exception("forward pass failed")
            for chunk in plan.chunks:
                self._finish(chunk.seq, FinishReason.ERROR, f"{type(exc).__name__}: {exc}")
            return
        self.scheduler.update(plan)
        self._deliver(plan, logits)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "step: %d decodes, %d prompt tokens in %d chunks, %d waiting, %.1f ms",
                len(plan.decodes),
                sum(c.length for c in plan.prefills),
                len(plan.prefills),
                len(self.scheduler.waiting),
                (time.perf_counter() - started) * 1000,
            )

    def _deliver(self, plan: StepPlan, logits: torch.Tensor) -> None:
        """Samples each chunk that samples (a decode with proposals verifies them: 1 to
        len(draft) + 1 tokens) and emits the tokens in order, each checked for a stop."""
        plain: list[tuple[Chunk, int]] = []  # (chunk, its logits row)
        drafted: list[tuple[Chunk, int]] = []
        row = 0
        for chunk in plan.chunks:
            if chunk.samples:
                (drafted if chunk.draft else plain).append((chunk, row))
                row += 1 + len(chunk.draft)
        samplers = [chunk.seq.payload.sampler for chunk, _ in plain]
        rows = logits if not drafted else logits[[at for _, at in plain]]  # no copy without proposals
        tokens = sample_batch(samplers, rows) if plain else []
        for (chunk, _), token in zip(plain, tokens, strict=True):
            self._deliver_tokens(chunk, [token])
        for chunk, at in drafted:
            sampler: SequenceSampler = chunk.seq.payload.sampler
            verified = sampler.verify(logits[at : at + 1 + len(chunk.draft)], chunk.draft)
            accepted = len(verified) - 1
            self.scheduler.accept(chunk, accepted)
            self._proposed += len(chunk.draft)
            self._accepted += accepted
            self._deliver_tokens(chunk, verified, accepted)

    def _deliver_tokens(self, chunk: Chunk, tokens: list[SampledToken], accepted: int = 0) -> None:
        """Emits a chunk's sampled tokens in order until one ends the sequence. `accepted`: how many
        of them were the chunk's proposals (counted in the outputs where they are a prediction's)."""
        seq = chunk.seq
        failure = seq.payload.sampler.failure
        if failure is not None:  # its grammar broke: this sequence ends with an error, others go on
            logger.error("request %s: %s", seq.request_id, failure)
            self._finish(seq, FinishReason.ERROR, failure)
            return
        params = seq.params
        for index, token in enumerate(tokens):
            seq.token_ids.append(token.token_id)
            finish = None
            if token.token_id in params.stop_token_ids:
                finish = FinishReason.STOP
            elif seq.generated >= params.max_tokens or len(seq.token_ids) >= self.config.context_length:
                finish = FinishReason.LENGTH
            out = self._output(seq, token, finish)
            if seq.proposer is not None and seq.proposer.from_prediction:
                out.accepted_prediction = int(index < accepted)
                if index == len(tokens) - 1:
                    out.rejected_prediction = len(chunk.draft) - accepted
            if finish is not None:
                # Proposals accepted after a stop are not the sequence's (num_computed never
                # exceeds its tokens; its cached prefix is cut to them anyway).
                seq.num_computed = min(seq.num_computed, len(seq.token_ids))
                self._retire(seq)
                seq.payload.sink(out)
                return
            seq.payload.sink(out)

    def _emit(
        self, seq: Sequence, token: SampledToken | None, finish: FinishReason | None, error: str | None = None
    ) -> None:
        seq.payload.sink(self._output(seq, token, finish, error))

    @staticmethod
    def _output(
        seq: Sequence, token: SampledToken | None, finish: FinishReason | None, error: str | None = None
    ) -> StepOutput:
        consumer: _Consumer = seq.payload
        out = StepOutput(seq.request_id, token, finish, error)
        if not consumer.first_output_sent:
            out.prompt_tokens = seq.num_prompt
            out.cached_tokens = seq.cached_tokens
            consumer.first_output_sent = True
        return out

    def _finish(self, seq: Sequence, reason: FinishReason, error: str | None = None) -> None:
        if seq.state is SeqState.FINISHED:
            return
        self._retire(seq)
        self._emit(seq, None, reason, error)

    def _retire(self, seq: Sequence) -> None:
        """Out of the batch, and the published stats say so, before its last output goes out: a
        client that has its answer never finds the sequence still counted as running."""
        self.scheduler.finish(seq)
        self._by_id.pop(seq.request_id, None)
        self._publish_stats()


# A choice with this many outputs its reader has not taken yet is parked (out of the batch, its slot
# free for others) until the reader is down to RESUME_UNREAD: a client that stops reading holds no
# slot, and what waits for it stays bounded.
MAX_UNREAD = 32
RESUME_UNREAD = 8


class EngineStream:
    """The merged outputs of the engine requests of one chat request (its `n` choices).

    Iterating yields `(index, StepOutput)` until every request has finished or been aborted. Once
    `deadline` (a `time.monotonic()` value) has passed, each choice still open is aborted and yields
    one output with `FinishReason.TIMEOUT`. `close()` aborts whatever is still running; it is safe
    to call more than once. A choice whose outputs pile up unread (MAX_UNREAD) is parked in the
    engine and resumed once its reader has caught up.
    """

    def __init__(self, engine: Engine, requests: list[EngineRequest], deadline: float | None = None) -> None:
        self._engine = engine
        self._requests = requests
        self._index = {r.request_id: i for i, r in enumerate(requests)}
        self._open = set(range(len(requests)))
        self._queue: asyncio.Queue[StepOutput] = asyncio.Queue()
        self._unread = [0] * len(requests)
        self._parked: set[int] = set()
        self._expired = False
        loop = asyncio.get_running_loop()

        def sink(out: StepOutput) -> None:
            with contextlib.suppress(RuntimeError):  # a closed event loop: nobody is listening
                loop.call_soon_threadsafe(self._arrived, out)

        engine.submit(requests, sink)
        # One timer per request, not a timeout per awaited token; it wakes a waiting reader.
        self._timer = (
            None if deadline is None else loop.call_later(max(0.0, deadline - time.monotonic()), self._expire)
        )

    def _expire(self) -> None:
        self._expired = True
        self._queue.put_nowait(_DEADLINE)

    def _arrived(self, out: StepOutput) -> None:
        self._queue.put_nowait(out)
        index = self._index[out.request_id]
        self._unread[index] += 1
        if self._unread[index] >= MAX_UNREAD and index in self._open and index not in self._parked:
            self._parked.add(index)
            self._engine.park(out.request_id, True)

    def _taken(self, index: int) -> None:
        self._unread[index] -= 1
        if index in self._parked and self._unread[index] <= RESUME_UNREAD:
            self._parked.discard(index)
            if index in self._open:
                self._engine.park(self._requests[index].request_id, False)

    def __aiter__(self) -> EngineStream:
        return self

    async def __anext__(self) -> tuple[int, StepOutput]:
        while self._open:
            out = _DEADLINE if self._expired else await self._queue.get()
            if out is _DEADLINE:
                index = min(self._open)
                self.abort(index)
                return index, StepOutput(self._requests[index].request_id, None, FinishReason.TIMEOUT)
            index = self._index[out.request_id]
            self._taken(index)
            if index not in self._open:
                continue  # late output of a request already aborted
            if out.finish_reason is not None:
                self._open.discard(index)
            return index, out
        self.close()
        raise StopAsyncIteration

    def abort(self, index: int) -> None:
        if index in self._open:
            self._open.discard(index)
            self._engine.abort(self._requests[index].request_id)

    def close(self) -> None:
        """Aborts what still runs; drops the deadline timer (which would keep this stream alive)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for index in list(self._open):
            self.abort(index)


_DEADLINE = StepOutput("", None)  # queued when the deadline passes


class AsyncEngine:
    """asyncio face of `Engine`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def stream(self, requests: list[EngineRequest], deadline: float | None = None) -> EngineStream:
        """Raises QueueFull when the engine's waiting queue cannot take the requests."""
        return EngineStream(self.engine, requests, deadline)
