"""Which sequence holds which KV slot, and what finished sequences left behind for reuse."""

from __future__ import annotations

import enum
import time
from collections import Counter
from dataclasses import dataclass, field

from server.engine.pins import PinTable, holds
from server.engine.sequence import Sequence

MIN_REUSE_TOKENS = 8  # shorter shared prefixes are not worth a copy


class SlotState(enum.Enum):
    FREE = "free"
    RUNNING = "running"
    CACHED = "cached"  # a finished sequence's KV, kept until the slot is needed


@dataclass(slots=True)
class Slot:
    state: SlotState = SlotState.FREE
    seq: Sequence | None = None
    tokens: list[int] = field(default_factory=list)  # cached: the tokens whose KV the slot holds
    last_used: int = 0
    prompt: int = 0  # cached: how many of `tokens` were its sequence's prompt
    key: str = ""  # cached: its request's prompt_cache_key
    expires_at: float | None = None  # cached: forgotten then (prompt_cache_retention)


@dataclass(slots=True, frozen=True)
class PrefixMatch:
    slot: int
    tokens: int
    adopt: bool  # a cached slot taken over in place (no copy)
    # Cached, and the new prompt holds all of the entry's prompt: the same conversation one turn on (or
    # the same prompt again). Taking such an entry over in place loses nothing worth keeping.
    continues: bool = False


def common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    if n == 0 or a[0] != b[0]:
        return 0
    if a[:n] == b[:n]:
        return n
    lo, hi = 1, n  # a[:lo] == b[:lo] holds; a[:hi] == b[:hi] does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class SlotTable:
    def __init__(self, num_slots: int, pins: PinTable | None = None) -> None:
        self.slots = [Slot() for _ in range(num_slots)]
        self.pins = pins or PinTable(0, time.monotonic)
        self._clock = 0

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def valid_tokens(self, index: int) -> list[int]:
        slot = self.slots[index]
        if slot.state is SlotState.RUNNING and slot.seq is not None:
            return slot.seq.token_ids[: slot.seq.num_computed]
        return slot.tokens if slot.state is SlotState.CACHED else []

    def best_prefix(self, tokens: list[int], limit: int, usable: int) -> PrefixMatch | None:
        """The longest reusable prefix of `tokens` (at most `limit`) held in a slot below `usable`."""
        self._forget_expired()
        best: PrefixMatch | None = None
        for index in range(usable):
            slot = self.slots[index]
            if slot.state is SlotState.FREE:
                continue
            length = common_prefix(tokens, self.valid_tokens(index), limit)
            if length >= MIN_REUSE_TOKENS and (best is None or length > best.tokens):
                cached = slot.state is SlotState.CACHED
                continues = cached and length >= slot.prompt - 1  # the last prompt token may be re-read
                best = PrefixMatch(index, length, cached, continues)
        return best

    def touch(self, index: int) -> None:
        self.slots[index].last_used = self._tick()

    def take(self, usable: int, avoid: int | None = None, key: str = "") -> int | None:
        """A slot for a new sequence: the lowest free one, else a cached one: not a pinned one while
        another is left; among the others, the least recently used of the prompt_cache_key that
        holds the most (with no keys, plain LRU), so one busy key cannot flush everyone's prefixes.
        When keys tie, the new sequence's own key (`key`) gives up an entry."""
        self._forget_expired()
        free = [i for i in range(usable) if self.slots[i].state is SlotState.FREE and i != avoid]
        if free:
            return free[0]
        cached = [i for i in range(usable) if self.slots[i].state is SlotState.CACHED and i != avoid]
        if not cached:
            return None
        pinned = self._pinned(cached)
        unpinned = [i for i in cached if i not in pinned]
        if not unpinned:  # every slot is running or pinned: serving comes first
            self.pins.evicted += 1
            return min(cached, key=lambda i: pinned[i])
        held = Counter(self.slots[i].key for i in unpinned)
        busiest = max(held.values())
        candidates = [i for i in unpinned if held[self.slots[i].key] == busiest]
        own = [i for i in candidates if self.slots[i].key == key]
        return min(own or candidates, key=lambda i: self.slots[i].last_used)

    def _pinned(self, cached: list[int]) -> dict[int, float]:
        """The cached slots pins protect, and until when: for each live pin the most recently used
        slot holding its tokens; at most `pins.max_slots` of them, the latest-expiring first."""
        until: dict[int, float] = {}
        for pin in self.pins.live():
            holding = [i for i in cached if holds(self.slots[i].tokens, pin)]
            if holding:
                index = max(holding, key=lambda i: self.slots[i].last_used)
                until[index] = max(until.get(index, pin.until), pin.until)
        kept = sorted(until, key=lambda i: until[i], reverse=True)[: self.pins.max_slots]
        return {i: until[i] for i in kept}

    def _forget_expired(self) -> None:
        now: float | None = None
        for index, slot in enumerate(self.slots):
            if slot.state is SlotState.CACHED and slot.expires_at is not None:
                now = self.pins.clock() if now is None else now
                if slot.expires_at <= now:
                    self.slots[index] = Slot()

    def assign(self, index: int, seq: Sequence) -> None:
        self.slots[index] = Slot(SlotState.RUNNING, seq, [], self._tick())
        seq.slot = index

    def release(self, seq: Sequence, keep: bool) -> None:
        """The sequence leaves its slot; with `keep`, its computed KV stays for prefix reuse."""
        if seq.slot is None:
            return
        tokens = seq.token_ids[: seq.num_computed] if keep else []
        state = SlotState.CACHED if tokens else SlotState.FREE
        retain = seq.cache.retain_s
        expires = None if retain is None else self.pins.clock() + retain
        prompt = min(seq.num_prompt, len(tokens))
        self.slots[seq.slot] = Slot(state, None, tokens, self._tick(), prompt, seq.cache.key, expires)
        seq.slot = None

    def move(self, source: int, target: int) -> None:
        slot = self.slots[source]
        self.slots[target] = slot
        self.slots[source] = Slot()
        if slot.seq is not None:
            slot.seq.slot = target

    def running(self) -> int:
        return sum(1 for s in self.slots if s.state is SlotState.RUNNING)

    def truncate(self, capacity: int) -> None:
        """Cached KV beyond a smaller capacity is lost; the prefix before it stays reusable."""
        for slot in self.slots:
            if slot.state is SlotState.CACHED and len(slot.tokens) > capacity:
                slot.tokens = slot.tokens[:capacity]
                slot.prompt = min(slot.prompt, capacity)

    def drop_above(self, usable: int) -> None:
        """Forgets cached KV in slots that the next layout will not have."""
        for index in range(usable, len(self.slots)):
            if self.slots[index].state is SlotState.CACHED:
                self.slots[index] = Slot()
