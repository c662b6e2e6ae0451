"""The engine loop: one thread owns the model and advances every running sequence in turn.

Each pass of the loop admits new requests, then gives every running sequence one forward step
(a prompt chunk or one decoded token) and hands the sampled token to that request's consumer.
Sequences finish on an end-of-sequence token, on their token limit, or when aborted; their cache
is dropped at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from transformers import DynamicCache

from server.engine.model_runner import ModelRunner
from server.engine.sampler import SequenceSampler
from server.engine.types import EngineRequest, FinishReason, SampledToken, StepOutput

logger = logging.getLogger(__name__)

Sink = Callable[[StepOutput], None]
PREFILL_CHUNK_TOKENS = 512  # long prompts are read in chunks so running streams keep flowing


@dataclass(slots=True)
class _Sequence:
    request: EngineRequest
    sink: Sink
    sampler: SequenceSampler
    cache: DynamicCache
    prefilled: int = 0
    generated: int = 0
    last_token: int | None = None
    first_output_sent: bool = False
    aborted: bool = False

    @property
    def prompt_done(self) -> bool:
        return self.prefilled >= len(self.request.prompt_token_ids)


class Engine:
    """Thread-side engine. `submit` and `abort` may be called from any thread."""

    def __init__(self, runner: ModelRunner, name: str = "engine") -> None:
        self.runner = runner
        self._name = name
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._incoming: list[_Sequence] = []
        self._aborts: set[str] = set()
        self._running: list[_Sequence] = []
        self._stopped = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, request: EngineRequest, sink: Sink) -> None:
        sampler = SequenceSampler(request.params, self.runner.vocab_size)
        seq = _Sequence(request, sink, sampler, self.runner.new_cache())
        with self._wake:
            self._incoming.append(seq)
            self._wake.notify()

    def abort(self, request_id: str) -> None:
        with self._wake:
            self._aborts.add(request_id)
            self._wake.notify()

    @property
    def num_running(self) -> int:
        return len(self._running)

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._stopped or self._incoming or self._running or self._aborts):
                    self._wake.wait()
                if self._stopped:
                    break
                self._running.extend(self._incoming)
                self._incoming.clear()
                aborts, self._aborts = self._aborts, set()
            for seq in self._running:
                if seq.request.request_id in aborts:
                    seq.aborted = True
            for seq in list(self._running):
                self._advance(seq)
        for seq in self._running:
            self._finish(seq, FinishReason.ABORT)

    def _advance(self, seq: _Sequence) -> None:
        if seq.aborted:
            self._finish(seq, FinishReason.ABORT)
            return
        try:
            if not seq.prompt_done:
                prompt = seq.request.prompt_token_ids
                chunk = prompt[seq.prefilled : seq.prefilled + PREFILL_CHUNK_TOKENS]
                logits = self.runner.forward(chunk, seq.cache)
                seq.prefilled += len(chunk)
                if not seq.prompt_done:
                    return
            else:
                assert seq.last_token is not None
                logits = self.runner.forward([seq.last_token], seq.cache)
            token = seq.sampler.sample(logits)
        except Exception as exc:  # one failing request must not take the loop down
            logger.exception("generation failed for %s", seq.request.request_id)
            self._finish(seq, FinishReason.ERROR, error=f"{type(exc).__name__}: {exc}")
            return
        seq.last_token = token.token_id
        seq.generated += 1
        params = seq.request.params
        finish: FinishReason | None = None
        if token.token_id in params.stop_token_ids:
            finish = FinishReason.STOP
        elif seq.generated >= params.max_tokens:
            finish = FinishReason.LENGTH
        seq.sink(self._output(seq, token, finish))
        if finish is not None:
            self._retire(seq)

    def _output(
        self,
        seq: _Sequence,
        token: SampledToken | None,
        finish: FinishReason | None,
        error: str | None = None,
    ) -> StepOutput:
        out = StepOutput(seq.request.request_id, token, finish, error)
        if not seq.first_output_sent:
            out.prompt_tokens = len(seq.request.prompt_token_ids)
            seq.first_output_sent = True
        return out

    def _finish(self, seq: _Sequence, reason: FinishReason, error: str | None = None) -> None:
        seq.sink(self._output(seq, None, reason, error))
        self._retire(seq)

    def _retire(self, seq: _Sequence) -> None:
        if seq in self._running:
            self._running.remove(seq)
        seq.cache = None  # type: ignore[assignment]  # free the KV memory now


class EngineStream:
    """The merged outputs of several engine requests (the `n` choices of one chat request).

    Iterating yields `(index, StepOutput)` until every request has finished or been aborted.
    `close()` aborts whatever is still running; it is safe to call more than once.
    """

    def __init__(self, engine: Engine, requests: list[EngineRequest]) -> None:
        self._engine = engine
        self._requests = requests
        self._index = {r.request_id: i for i, r in enumerate(requests)}
        self._open = set(range(len(requests)))
        self._queue: asyncio.Queue[StepOutput] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def sink(out: StepOutput) -> None:
            with contextlib.suppress(RuntimeError):  # a closed event loop: nobody is listening
                loop.call_soon_threadsafe(self._queue.put_nowait, out)

        for request in requests:
            engine.submit(request, sink)

    def __aiter__(self) -> EngineStream:
        return self

    async def __anext__(self) -> tuple[int, StepOutput]:
        while self._open:
            out = await self._queue.get()
            index = self._index[out.request_id]
            if index not in self._open:
                continue  # late output of a request already aborted
            if out.finish_reason is not None:
                self._open.discard(index)
            return index, out
        raise StopAsyncIteration

    def abort(self, index: int) -> None:
        if index in self._open:
            self._open.discard(index)
            self._engine.abort(self._requests[index].request_id)

    def close(self) -> None:
        for index in list(self._open):
            self.abort(index)


class AsyncEngine:
    """asyncio face of `Engine`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def stream(self, requests: list[EngineRequest]) -> EngineStream:
        return EngineStream(self.engine, requests)
