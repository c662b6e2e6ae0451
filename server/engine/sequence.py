"""One generated sequence as the scheduler sees it (no tensors)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from server.engine.types import CachePolicy, SamplingParams


class SeqState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PARKED = "parked"  # its reader is behind: out of the batch, holding no slot, until resumed
    FINISHED = "finished"


@dataclass(slots=True, eq=False)
class RequestGroup:
    """The sequences of one request (its `n` choices): once one of them is admitted, the request
    has its place, and the others are never refused for waiting (they run as slots free up)."""

    admitted: bool = False


@dataclass(slots=True, eq=False)
class Sequence:
    request_id: str
    token_ids: list[int]  # the prompt, then every generated token
    num_prompt: int
    params: SamplingParams
    arrival: int = 0
    enqueued_at: float = 0.0  # time.monotonic() when it was submitted
    state: SeqState = SeqState.WAITING
    slot: int | None = None
    num_computed: int = 0  # leading tokens whose keys and values are in the slot
    cached_tokens: int = 0  # prompt tokens reused from an earlier sequence's KV
    preemptions: int = 0
    parks: int = 0  # times it was parked because its reader fell behind
    payload: Any = field(default=None)  # the engine's per-sequence state (sampler, sink)
    proposer: Any = field(default=None)  # speculation.Proposer: tokens to verify with each decode
    group: RequestGroup = field(default_factory=RequestGroup)
    cache: CachePolicy = field(default_factory=CachePolicy)
    # engine.media.PromptMedia: prompt rows from encoders, shared by the request's choices; the
    # prompt's tokens hold a negative id at each of its positions (see media.media_token_id).
    media: Any = field(default=None)

    @property
    def spans(self) -> tuple[tuple[int, int], ...]:
        """Prompt spans whose rows attend to each other both ways (Gemma 3's images)."""
        return self.media.bidirectional if self.media is not None else ()

    @property
    def generated(self) -> int:
        return len(self.token_ids) - self.num_prompt

    @property
    def readmitted(self) -> bool:
        """It ran before and left the batch (preempted, or parked): its KV is recomputed or reused."""
        return self.preemptions > 0 or self.parks > 0

    @property
    def never_admitted(self) -> bool:
        """Neither it nor another choice of its request has had a place in the batch yet."""
        return (
            self.state is SeqState.WAITING
            and not self.readmitted
            and self.num_computed == 0
            and not self.group.admitted
        )

    @property
    def pending(self) -> int:
        """Tokens to feed before the next token can be sampled."""
        return len(self.token_ids) - self.num_computed

    @property
    def is_decoding(self) -> bool:
        return self.pending == 1 and self.num_computed >= self.num_prompt
