"""Plain data passed between the chat layer and the engine."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# The grammar hook: given the tokens generated so far, a bool mask over the vocabulary (True =
# allowed), or None for "no constraint". Structured outputs and tool calls plug in here.
TokenMaskFn = Callable[[list[int]], torch.Tensor | None]

# Prompt rows attend in blocks of this many positions; prompt chunks end, and cached prefixes are
# reused, on multiples of it (see kv_cache.PrefillSegment).
PREFILL_BLOCK = 32


class FinishReason(enum.Enum):
    STOP = "stop"  # an end-of-sequence token (stop strings are the chat layer's business)
    LENGTH = "length"  # max_tokens reached
    ABORT = "abort"  # cancelled by the caller, or by the engine stopping
    QUEUE_TIMEOUT = "queue_timeout"  # waited longer than `max_queue_wait_s` without being admitted
    TIMEOUT = "timeout"  # the request's deadline passed (set by `EngineStream`, never by the engine)
    ERROR = "error"  # the engine failed on this request


@dataclass(slots=True, frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    seed: int | None = None
    top_logprobs: int | None = None  # None: no logprobs; 0..20: the sampled token's, plus k alternatives
    stop_token_ids: frozenset[int] = frozenset()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(slots=True, frozen=True)
class CachePolicy:
    """How one request uses the prefix cache (prompt caching, as the API defines it)."""

    # (prompt tokens, seconds): keep the KV of that prefix at least this long (breakpoints).
    pins: tuple[tuple[int, float], ...] = ()
    # None: any shared prefix is reused. Otherwise only up to one of these prompt lengths (explicit
    # mode: hits only at breakpoints; none given, nothing is reused).
    reuse_at: tuple[int, ...] | None = None
    keep: bool = True  # its KV stays cached for later requests once it finishes
    key: str = ""  # prompt_cache_key: when a slot is needed, the busiest key's entries go first
    retain_s: float | None = None  # the longest its KV stays cached after it finishes (None: no limit)


@dataclass(slots=True)
class EngineRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    mask_fn: TokenMaskFn | None = None  # one per request: it holds that sequence's grammar state
    cache: CachePolicy = CachePolicy()
    prediction: tuple[int, ...] | None = None  # the request's `prediction`, tokenized: proposals
    media: Any = None  # engine.media.PromptMedia: its images' and audio's rows, one for all choices


@dataclass(slots=True, frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float


@dataclass(slots=True, frozen=True)
class SampledToken:
    token_id: int
    logprob: float | None = None  # set when logprobs were asked for
    top: tuple[TokenLogprob, ...] = ()  # descending by logprob


@dataclass(slots=True)
class StepOutput:
    """What one engine step produced for one request."""

    request_id: str
    token: SampledToken | None
    finish_reason: FinishReason | None = None
    error: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    # The request's `prediction`: 1 when this token was a proposal from it that was accepted; on a
    # step's last token, how many of the step's proposals from it were rejected.
    accepted_prediction: int = 0
    rejected_prediction: int = 0


@dataclass(slots=True, frozen=True)
class EngineConfig:
    max_running: int = 16  # sequences decoded together (KV slots)
    max_kv_tokens: int = 131072  # slots x per-slot capacity never exceeds this
    max_batch_tokens: int = 512  # tokens per forward pass; long prompts are read in chunks of this
    max_waiting: int = 256  # queued sequences beyond this are refused (HTTP 429)
    max_queue_wait_s: float | None = 60.0  # a sequence never admitted within this is refused (HTTP 429)
    min_capacity: int = 256  # first per-slot capacity; doubles as sequences grow
    context_length: int = 8192  # no sequence is longer
    max_pinned_slots: int = 8  # slots that pinned prefixes may hold (prompt cache breakpoints)
    prefill_block: int = PREFILL_BLOCK  # 1: chunks and reused prefixes of any length (not exact)
    speculation: str | None = None  # "ngram": prompt lookup for every request (speculation.py)
    speculative_tokens: int = 8  # the most tokens proposed per sequence and step
    speculation_max_batch: int = 4  # prompt lookup only in steps with at most this many decodes
    prediction_tokens: int = 16  # the same for a request's `prediction`


@dataclass(slots=True, frozen=True)
class EngineStats:
    """A snapshot the engine publishes after every pass (read from other threads, e.g. /metrics)."""

    running: int = 0
    waiting: int = 0
    parked: int = 0  # out of the batch while their readers catch up
    kv_tokens_used: int = 0  # tokens whose keys and values the running sequences hold
    kv_tokens_allocated: int = 0  # slots x capacity of the cache as allocated now
    kv_bytes_allocated: int = 0
    kv_tokens_budget: int = 0  # max_kv_tokens
    preemptions: int = 0  # since start
    pinned_tokens: int = 0  # tokens of the live pinned prefixes (prompt cache breakpoints)
    pins_evicted: int = 0  # since start: pinned slots reused because every other slot was busy
    proposed_tokens: int = 0  # since start: proposed tokens verified (prediction, prompt lookup)
    accepted_tokens: int = 0  # since start: of those, accepted


class QueueFull(Exception):
    """The waiting queue is full: the caller should retry later."""
