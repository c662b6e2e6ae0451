"""Prometheus metrics: one registry per app, read by `GET /metrics`.

Request counters and latencies are recorded as requests go by; the engines' state (running and
waiting sequences, KV memory) is read from each engine's published snapshot when scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from server.engine.types import EngineStats
from server.storage.writer import StoreWriter

PREFIX = "openweights"
# Seconds: from tens of milliseconds (a GPU decode step) to minutes (a long prompt on a busy CPU).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0)

EngineStatsSource = Callable[[], Iterable[tuple[str, EngineStats]]]
MODEL_STATES = ("unloaded", "loading", "ready", "failed")


@dataclass(slots=True, frozen=True)
class ModelStatus:
    model: str
    state: str  # one of MODEL_STATES
    loads: int  # completed loads since start
    unloads: int
    memory_bytes: int  # counted against server.max_loaded_bytes


ModelStatusSource = Callable[[], Iterable[ModelStatus]]


class Metrics:
    def __init__(
        self,
        engine_stats: EngineStatsSource,
        store_writer: StoreWriter | None = None,
        models: ModelStatusSource | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP requests answered, by route template, status and model",
            ["method", "route", "status", "model"],
            registry=r,
        )
        self.request_duration = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response (a stream's last byte)",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            f"{PREFIX}_errors",
            "Error responses and stream error events, by OpenAI error type and code",
            ["type", "code"],
            registry=r,
        )
        self.time_to_first_token = Histogram(
            f"{PREFIX}_time_to_first_token_seconds",
            "Time from a chat request's arrival to each choice's first generated token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token_latency = Histogram(
            f"{PREFIX}_inter_token_latency_seconds",
            "Time between consecutive generated tokens of a choice",
            ["model"],
            buckets=TOKEN_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            f"{PREFIX}_prompt_tokens", "Prompt tokens of admitted requests", ["model"], registry=r
        )
        self.cached_prompt_tokens = Counter(
            f"{PREFIX}_cached_prompt_tokens", "Prompt tokens whose KV was reused", ["model"], registry=r
        )
        self.generation_tokens = Counter(
            f"{PREFIX}_generation_tokens", "Tokens generated", ["model"], registry=r
        )
        self.choices_finished = Counter(
            f"{PREFIX}_choices_finished",
            "Choices that ended, by reason (stop, length, tool_calls, timeout, ...)",
            ["model", "reason"],
            registry=r,
        )
        self.stalled_streams = Counter(
            f"{PREFIX}_stalled_streams",
            "Streams given up because their client stopped reading (server.stalled_stream_timeout_s)",
            registry=r,
        )
        r.register(_EngineCollector(engine_stats))
        if models is not None:
            r.register(_ModelCollector(models))
        if store_writer is not None:
            r.register(_StoreCollector(store_writer))


class _EngineCollector(Collector):
    def __init__(self, source: EngineStatsSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for kind, specs in ((GaugeMetricFamily, _ENGINE_GAUGES), (CounterMetricFamily, _ENGINE_COUNTERS)):
            for field, (name, doc) in specs.items():
                families[field] = kind(f"{PREFIX}_{name}", doc, labels=["model"])
        for model, stats in self._source():
            for field, family in families.items():
                family.add_metric([model], getattr(stats, field))
        yield from families.values()


# EngineStats field -> (metric name, help)
_ENGINE_GAUGES = {
    "running": ("running_sequences", "Sequences in the running batch"),
    "waiting": ("waiting_sequences", "Sequences waiting for a place in the batch (queue depth)"),
    "parked": ("parked_sequences", "Sequences out of the batch until their reader takes their output"),
    "kv_tokens_used": ("kv_cache_used_tokens", "Tokens held in the KV cache by running sequences"),
    "kv_tokens_allocated": ("kv_cache_allocated_tokens", "Token capacity of the KV cache as allocated"),
    "kv_bytes_allocated": ("kv_cache_allocated_bytes", "Memory of the KV cache as allocated"),
    "kv_tokens_budget": ("kv_cache_budget_tokens", "The configured KV budget (max_kv_tokens)"),
    "pinned_tokens": (
        "prompt_cache_pinned_tokens",
        "Prompt tokens pinned in the prefix cache by live breakpoints",
    ),
}
_ENGINE_COUNTERS = {
    "preemptions": ("preemptions", "Running sequences preempted for lack of KV memory"),
    "pins_evicted": (
        "prompt_cache_pins_evicted",
        "Pinned prefixes given up because every other KV slot was busy",
    ),
    "proposed_tokens": (
        "speculative_proposed_tokens",
        "Proposed tokens verified (a request's prediction, prompt lookup)",
    ),
    "accepted_tokens": ("speculative_accepted_tokens", "Proposed tokens accepted"),
}


class _ModelCollector(Collector):
    """Each configured model's lifecycle: its state (1 for the state it is in), loads, unloads."""

    def __init__(self, source: ModelStatusSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            f"{PREFIX}_model_state", "1 for the state each model is in", labels=["model", "state"]
        )
        memory = GaugeMetricFamily(
            f"{PREFIX}_model_memory_bytes", "Memory a model counts against max_loaded_bytes", labels=["model"]
        )
        loads = CounterMetricFamily(f"{PREFIX}_model_loads", "Completed model loads", labels=["model"])
        unloads = CounterMetricFamily(f"{PREFIX}_model_unloads", "Model unloads", labels=["model"])
        for status in self._source():
            for name in MODEL_STATES:
                state.add_metric([status.model, name], float(status.state == name))
            memory.add_metric([status.model], status.memory_bytes)
            loads.add_metric([status.model], status.loads)
            unloads.add_metric([status.model], status.unloads)
        yield from (state, memory, loads, unloads)


class _StoreCollector(Collector):
    """`store: true` writes happen on the writer thread, each before its response ends."""

    def __init__(self, writer: StoreWriter) -> None:
        self._writer = writer

    def collect(self) -> Iterator[Metric]:
        writes = CounterMetricFamily(
            f"{PREFIX}_store_writes", "Stored completions written, or failed to write", labels=["result"]
        )
        writes.add_metric(["written"], self._writer.written)
        writes.add_metric(["failed"], self._writer.failed)
        yield writes
        yield GaugeMetricFamily(
            f"{PREFIX}_store_pending", "Completions waiting to be written", value=self._writer.pending
        )
