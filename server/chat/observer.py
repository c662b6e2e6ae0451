"""What one chat request reports to the metrics: latencies per token, tokens, how choices ended."""

from __future__ import annotations

import time

from server.metrics import Metrics


class RequestObserver:
    """`started`: the request's arrival, a `time.monotonic()` value."""

    def __init__(self, metrics: Metrics | None, model: str, started: float, choices: int) -> None:
        self._metrics = metrics
        self._model = model
        self._started = started
        self._last: list[float | None] = [None] * choices
        if metrics is not None:  # the labelled children, looked up once rather than per token
            self._ttft = metrics.time_to_first_token.labels(model)
            self._itl = metrics.inter_token_latency.labels(model)
            self._generated = metrics.generation_tokens.labels(model)

    def admitted(self, prompt_tokens: int, cached_tokens: int) -> None:
        if self._metrics is None:
            return
        self._metrics.prompt_tokens.labels(self._model).inc(prompt_tokens)
        self._metrics.cached_prompt_tokens.labels(self._model).inc(cached_tokens)

    def token(self, index: int) -> None:
        if self._metrics is None:
            return
        now = time.monotonic()
        last = self._last[index]
        if last is None:
            self._ttft.observe(now - self._started)
        else:
            self._itl.observe(now - last)
        self._last[index] = now
        self._generated.inc()

    def finished(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.choices_finished.labels(self._model, reason).inc()
