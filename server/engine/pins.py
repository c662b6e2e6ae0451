"""Pinned prefixes: prompt caching's explicit breakpoints (and `prompt_cache_options.ttl`).

A pin names the first tokens of a prompt and a time; until then, one cached slot whose KV begins
with those tokens (the most recently used) is not given to another sequence while any unpinned
slot is left (see `SlotTable.take`). Pins hold at most `max_slots` slots: past that, the pins that
expire soonest stop protecting theirs. Serving comes first: when every slot is running or pinned,
the pinned slot that expires soonest is reused, and counted in `evicted`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

MAX_PINS = 256  # live pins kept; a new one beyond this replaces the one expiring soonest


@dataclass(slots=True)
class Pin:
    tokens: list[int]
    until: float  # on `clock`


class PinTable:
    def __init__(self, max_slots: int, clock: Callable[[], float]) -> None:
        self.max_slots = max_slots
        self.clock = clock
        self._pins: list[Pin] = []
        self.evicted = 0  # pinned slots reused because nothing else was left

    def add(self, tokens: list[int], ttl_s: float) -> None:
        until = self.clock() + ttl_s
        for pin in self._pins:
            if pin.tokens == tokens:
                pin.until = max(pin.until, until)
                return
        self._pins.append(Pin(list(tokens), until))
        if len(self._pins) > MAX_PINS:
            self._pins.remove(min(self._pins, key=lambda p: p.until))

    def live(self) -> list[Pin]:
        now = self.clock()
        self._pins = [pin for pin in self._pins if pin.until > now]
        return self._pins

    @property
    def pinned_tokens(self) -> int:
        return sum(len(pin.tokens) for pin in self.live())


def holds(tokens: list[int], pin: Pin) -> bool:
    return len(tokens) >= len(pin.tokens) and tokens[: len(pin.tokens)] == pin.tokens
