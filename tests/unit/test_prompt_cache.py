"""Prompt caching in the scheduler: pinned prefixes, explicit mode, cache keys and retention, with a
fake clock and no model."""

from __future__ import annotations

from server.engine.scheduler import Scheduler
from server.engine.sequence import Sequence
from server.engine.types import CachePolicy, EngineConfig
from tests.unit.test_scheduler import PARAMS, run

SYSTEM = list(range(500, 540))  # a 40-token system prompt


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def scheduler(clock: Clock, max_running: int = 4, max_pinned_slots: int = 2) -> Scheduler:
    config = EngineConfig(
        max_running=max_running,
        max_kv_tokens=max_running * 1024,
        max_batch_tokens=512,
        max_waiting=64,
        min_capacity=128,
        context_length=1024,
        max_pinned_slots=max_pinned_slots,
        prefill_block=1,  # reuse at any length; block bounds: tests/unit/test_scheduler.py
    )
    return Scheduler(config, clock)


DEFAULT = CachePolicy()


def ask(s: Scheduler, name: str, prompt: list[int], cache: CachePolicy = DEFAULT) -> Sequence:
    """One request through the scheduler to the end: admitted, read, one token, finished."""
    seq = Sequence(name, list(prompt), len(prompt), PARAMS, cache=cache)
    s.add([seq])
    for _ in range(100):
        if seq.generated:
            break
        run(s)
    assert seq.generated == 1, "never admitted"
    s.finish(seq)
    return seq


def question(i: int) -> list[int]:
    return list(range(10_000 * (i + 1), 10_000 * (i + 1) + 30))


def test_a_pinned_system_prompt_outlives_traffic_that_evicts_everything_else() -> None:
    clock = Clock()
    s = scheduler(clock)
    pin = CachePolicy(pins=((len(SYSTEM), 1800.0),))
    ask(s, "pinned", [*SYSTEM, *question(0)], pin)
    ask(s, "unpinned", [*list(range(700, 740)), *question(1)])
    for i in range(2, 12):  # ten other prompts through four slots
        ask(s, f"other{i}", question(i))
    assert ask(s, "again", [*list(range(700, 740)), *question(1)]).cached_tokens == 0  # evicted
    later = ask(s, "later", [*SYSTEM, *question(20)])
    assert later.cached_tokens == len(SYSTEM)
    assert s.pins.pinned_tokens == len(SYSTEM) and s.pins.evicted == 0


def test_a_pin_expires_after_its_ttl() -> None:
    clock = Clock()
    s = scheduler(clock)
    ask(s, "pinned", [*SYSTEM, *question(0)], CachePolicy(pins=((len(SYSTEM), 1800.0),)))
    clock.now = 1801.0
    for i in range(1, 6):
        ask(s, f"other{i}", question(i))
    assert s.pins.pinned_tokens == 0
    assert ask(s, "later", [*SYSTEM, *question(20)]).cached_tokens == 0


def test_pins_never_keep_a_sequence_from_running() -> None:
    """Every slot pinned or busy: the pinned slot that expires soonest is reused, and counted."""
    clock = Clock()
    s = scheduler(clock, max_running=2, max_pinned_slots=2)
    for i, ttl in enumerate((1800.0, 3600.0)):
        system = list(range(100 * (i + 1), 100 * (i + 1) + 40))
        ask(s, f"pinned{i}", [*system, *question(i)], CachePolicy(pins=((40, ttl),)))
    newcomer = ask(s, "newcomer", question(9))
    assert newcomer.generated == 1 and s.pins.evicted == 1
    # The pin expiring later kept its slot.
    assert ask(s, "kept", [*range(200, 240), *question(30)]).cached_tokens == 40


def test_pins_hold_at_most_max_pinned_slots() -> None:
    clock = Clock()
    s = scheduler(clock, max_running=4, max_pinned_slots=1)
    for i in range(2):
        system = list(range(100 * (i + 1), 100 * (i + 1) + 40))
        ask(s, f"pinned{i}", [*system, *question(i)], CachePolicy(pins=((40, 1800.0 * (i + 1)),)))
    for i in range(2, 8):
        ask(s, f"other{i}", question(i))
    assert ask(s, "latest pin", [*range(200, 240), *question(30)]).cached_tokens == 40
    assert ask(s, "over the limit", [*range(100, 140), *question(31)]).cached_tokens == 0
    assert s.pins.evicted == 0


def test_explicit_mode_reuses_only_up_to_a_breakpoint_and_nothing_without_one() -> None:
    clock = Clock()
    s = scheduler(clock)
    prompt = [*SYSTEM, *question(0)]
    ask(s, "first", prompt)
    again = ask(s, "explicit, no breakpoint", prompt, CachePolicy(reuse_at=(), keep=False))
    assert again.cached_tokens == 0
    at = ask(s, "explicit at 40", prompt, CachePolicy(reuse_at=(20, 40)))
    assert at.cached_tokens == 40  # not the whole shared prompt: only up to its breakpoint
    assert ask(s, "implicit", prompt).cached_tokens == len(prompt) - 1


def test_explicit_mode_without_breakpoints_leaves_nothing_cached() -> None:
    clock = Clock()
    s = scheduler(clock)
    prompt = [*SYSTEM, *question(0)]
    ask(s, "private", prompt, CachePolicy(reuse_at=(), keep=False))
    assert ask(s, "after", prompt).cached_tokens == 0


def test_the_busiest_cache_key_gives_up_its_entries_first() -> None:
    clock = Clock()
    s = scheduler(clock, max_running=4)
    ask(s, "quiet", [*SYSTEM, *question(0)], CachePolicy(key="team-a"))
    for i in range(1, 10):  # team b's burst through four slots
        ask(s, f"busy{i}", question(i), CachePolicy(key="team-b"))
    assert ask(s, "quiet again", [*SYSTEM, *question(20)], CachePolicy(key="team-a")).cached_tokens == 40
    # Without keys the same traffic is plain LRU: the quiet entry is gone.
    s = scheduler(clock, max_running=4)
    ask(s, "quiet", [*SYSTEM, *question(0)])
    for i in range(1, 10):
        ask(s, f"busy{i}", question(i))
    assert ask(s, "quiet again", [*SYSTEM, *question(20)]).cached_tokens == 0


def test_retention_forgets_cached_kv_after_its_limit() -> None:
    clock = Clock()
    s = scheduler(clock)
    ask(s, "first", [*SYSTEM, *question(0)], CachePolicy(retain_s=3600.0))
    clock.now = 3599.0
    assert ask(s, "within", [*SYSTEM, *question(1)]).cached_tokens == 40
    s = scheduler(clock)
    clock.now = 0.0
    ask(s, "first", [*SYSTEM, *question(0)], CachePolicy(retain_s=3600.0))
    clock.now = 3601.0
    assert ask(s, "past", [*SYSTEM, *question(1)]).cached_tokens == 0
