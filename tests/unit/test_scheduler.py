"""The scheduler's decisions on their own, with fake token counts and no model."""

import pytest

from server.engine.scheduler import Scheduler, StepPlan
from server.engine.sequence import SeqState, Sequence
from server.engine.types import EngineConfig, QueueFull, SamplingParams

PARAMS = SamplingParams(max_tokens=1000)


def seq(name: str, prompt_len: int, first: int = 1000) -> Sequence:
    tokens = list(range(first, first + prompt_len))
    return Sequence(name, tokens, prompt_len, PARAMS)


def run(scheduler: Scheduler) -> StepPlan:
    """One step as the engine does it: plan, 'compute', and sample a token for each that samples."""
    plan = scheduler.schedule()
    scheduler.update(plan)
    for chunk in plan.chunks:
        if chunk.samples:
            chunk.seq.token_ids.append(7)
    return plan


def config(**overrides: float | None) -> EngineConfig:
    """The scheduler's mechanics with chunks and reused prefixes of any length (prefill_block 1);
    the block bounds have tests of their own."""
    base = dict(
        max_running=4,
        max_kv_tokens=4 * 1024,
        max_batch_tokens=64,
        max_waiting=8,
        min_capacity=64,
        prefill_block=1,
    )
    return EngineConfig(**{**base, **overrides}, context_length=1024)


def test_admits_in_order_up_to_max_running() -> None:
    s = Scheduler(config(max_running=2))
    a, b, c = seq("a", 10), seq("b", 10, 2000), seq("c", 10, 3000)
    s.add([a])
    s.add([b])
    s.add([c])
    plan = run(s)
    assert [ch.seq for ch in plan.prefills] == [a, b]
    assert c.state is SeqState.WAITING
    s.finish(a)
    plan = run(s)
    assert c in [ch.seq for ch in plan.prefills] and [ch.seq for ch in plan.decodes] == [b]


def test_long_prompt_is_chunked_while_others_decode() -> None:
    s = Scheduler(config(max_batch_tokens=32, prefill_block=32))
    short = seq("short", 5)
    s.add([short])
    run(s)
    long = seq("long", 100, 5000)
    s.add([long])
    assert s.block == 28  # what 32 tokens hold beside 4 decodes
    ends = []
    while long.num_computed < 100:
        plan = run(s)
        assert [ch.seq for ch in plan.decodes] == [short]  # the running stream keeps producing
        ends += [ch.start + ch.length for ch in plan.prefills]
        assert sum(ch.length for ch in plan.chunks) <= 32
    # Each chunk ends on a block bound (so a prompt row attends the same however it is cut) or at the
    # prompt's end; chunks take what the budget holds of that.
    assert ends == [28, 56, 84, 100]
    assert len(long.token_ids) == 101


def test_queue_full_refuses_whole_request() -> None:
    s = Scheduler(config(max_waiting=3))
    s.check_room(len(s.waiting), 2)
    s.add([seq("a", 4), seq("b", 4)])
    with pytest.raises(QueueFull):
        s.check_room(len(s.waiting), 2)
    s.check_room(len(s.waiting), 1)


def test_only_never_admitted_sequences_become_overdue() -> None:
    s = Scheduler(config(max_running=1, max_queue_wait_s=10.0))
    running, fresh, late = seq("running", 4), seq("fresh", 4, 2000), seq("late", 4, 3000)
    for item, submitted in ((running, 0.0), (fresh, 95.0), (late, 80.0)):
        item.enqueued_at = submitted
        s.add([item])
    run(s)
    assert running.state is SeqState.RUNNING
    assert s.overdue(now=100.0) == [late]  # waited 20 s; `fresh` waited 5 s
    s._preempt(running)  # a preempted sequence was admitted once: it is never refused afterwards
    assert s.overdue(now=1000.0) == [fresh, late]
    assert Scheduler(config(max_queue_wait_s=None)).overdue(now=1e9) == []


def test_finished_sequence_frees_its_slot_at_once() -> None:
    s = Scheduler(config(max_running=1))
    a, b = seq("a", 4), seq("b", 4, 2000)
    s.add([a, b])
    run(s)
    assert b.state is SeqState.WAITING
    s.finish(a)
    assert a.slot is None
    plan = run(s)
    assert [ch.seq for ch in plan.prefills] == [b] and b.slot == 0


def test_aborting_a_waiting_sequence_removes_it() -> None:
    s = Scheduler(config(max_running=1))
    a, b = seq("a", 4), seq("b", 4, 2000)
    s.add([a, b])
    run(s)
    s.finish(b)
    assert b not in s.waiting and b.state is SeqState.FINISHED


def test_a_reused_prefix_is_cut_to_a_block_bound() -> None:
    """The rows after the reused prefix are then read in the blocks a fresh prompt reads them in:
    a cached prompt gets bitwise the same answer (tests/unit/test_batch_invariance.py)."""
    s = Scheduler(config(max_batch_tokens=512, prefill_block=32))
    first = seq("first", 70)
    s.add([first])
    run(s)
    s.finish(first)
    again = Sequence("again", list(first.token_ids), 71, PARAMS)
    s.add([again])
    plan = run(s)
    assert again.cached_tokens == 64 and [(ch.start, ch.length) for ch in plan.prefills] == [(64, 7)]
    s.finish(again)
    short = Sequence("short", list(first.token_ids[:31]), 31, PARAMS)  # shares less than one block
    s.add([short])
    plan = run(s)
    assert short.cached_tokens == 0 and [(ch.start, ch.length) for ch in plan.prefills] == [(0, 31)]


def test_prefix_of_a_finished_sequence_is_reused_in_place() -> None:
    s = Scheduler(config())
    first = seq("first", 40)
    s.add([first])
    run(s)
    s.finish(first)
    follow_up = Sequence("next", [*first.token_ids, 5, 6, 7], 44, PARAMS)  # same conversation, one more turn
    s.add([follow_up])
    plan = run(s)
    assert plan.kv_ops == []  # it continues the whole entry: taken over, no copy, slot 1 stays free
    assert follow_up.slot == 0 and follow_up.cached_tokens == 40
    assert [(ch.start, ch.length) for ch in plan.prefills] == [(40, 4)]


def test_shared_prefix_of_a_longer_entry_is_copied_into_a_free_slot() -> None:
    s = Scheduler(config())
    system = list(range(500, 530))
    first = Sequence("first", [*system, *range(1000, 1040)], 70, PARAMS)
    s.add([first])
    run(s)
    run(s)
    s.finish(first)
    other = Sequence("other", [*system, 1, 2, 3], 33, PARAMS)  # same system prompt, another question
    s.add([other])
    plan = run(s)
    assert plan.kv_ops == [(0, 1, 30)]  # the entry keeps its tail for the conversation it holds
    assert other.slot == 1 and other.cached_tokens == 30


def test_follow_ups_of_many_conversations_each_continue_their_own_entry() -> None:
    """Every slot holds a finished conversation; each one's next turn finds its own KV (taking over a
    slot in place never evicts another conversation's entry)."""
    s = Scheduler(config(max_running=4, max_batch_tokens=256))
    firsts = [seq(f"c{i}", 20, first=1000 * (i + 1)) for i in range(4)]
    s.add(firsts)
    run(s)
    slots = [f.slot for f in firsts]
    for first in firsts:
        s.finish(first)
    follow_ups = [Sequence(f"n{i}", [*f.token_ids, 5, 6], 23, PARAMS) for i, f in enumerate(firsts)]
    s.add(follow_ups)
    plan = run(s)
    assert plan.kv_ops == []
    assert [f.cached_tokens for f in follow_ups] == [20, 20, 20, 20]
    assert [f.slot for f in follow_ups] == slots


def test_cached_slot_is_adopted_in_place_when_no_slot_is_free() -> None:
    s = Scheduler(config(max_running=1))
    first = seq("first", 40)
    s.add([first])
    run(s)
    s.finish(first)
    follow_up = Sequence("next", [*first.token_ids, 5, 6, 7], 44, PARAMS)
    s.add([follow_up])
    plan = run(s)
    assert plan.kv_ops == [] and follow_up.slot == 0 and follow_up.cached_tokens == 40


def test_prefix_of_a_running_sequence_is_copied() -> None:
    s = Scheduler(config())
    system = list(range(500, 530))
    a = Sequence("a", [*system, 1, 2], 32, PARAMS)
    s.add([a])
    run(s)
    b = Sequence("b", [*system, 3, 4, 5], 33, PARAMS)
    s.add([b])
    plan = run(s)
    assert plan.kv_ops == [(a.slot, b.slot, 30)]
    assert b.cached_tokens == 30 and plan.prefills[0].start == 30


def test_n_choices_share_one_prefill() -> None:
    s = Scheduler(config(max_batch_tokens=16))
    prompt = list(range(100, 140))
    choices = [Sequence(f"c{i}", list(prompt), 40, PARAMS) for i in range(3)]
    s.add(choices)
    fed = 0
    while any(c.num_computed < 40 for c in choices):
        plan = run(s)
        fed += sum(ch.length for ch in plan.prefills)
    assert fed == 40 + 2  # the leader reads the prompt; each sibling recomputes one token
    assert [c.cached_tokens for c in choices] == [0, 39, 39]


def test_outgrowing_the_kv_budget_preempts_the_newest() -> None:
    s = Scheduler(config(max_running=4, max_kv_tokens=256, min_capacity=64, max_batch_tokens=256))
    old, new = seq("old", 60), seq("new", 10, 3000)
    s.add([old])
    run(s)
    s.add([new])
    run(s)
    assert s.capacity == 64 and len(s.running) == 2
    for _ in range(5):  # old grows past 64 tokens: capacity 128 leaves room for 2 slots, still fine
        run(s)
    assert s.capacity == 128 and new.state is SeqState.RUNNING
    old.token_ids.extend([7] * 70)  # old now needs 256 tokens: one slot fits the budget
    old.num_computed = len(old.token_ids) - 1
    plan = run(s)
    assert plan.preempted == [new] and new.state is SeqState.WAITING and new.num_computed == 0
    assert plan.num_slots * plan.capacity <= 256
    generated_before = new.generated
    s.finish(old)
    plan = run(s)
    assert new.state is SeqState.RUNNING and new.generated == generated_before + 1
    assert plan.prefills[0].start == 0 and plan.prefills[0].length == len(new.token_ids) - 1


def test_layout_never_exceeds_the_budget() -> None:
    s = Scheduler(config(max_running=8, max_kv_tokens=512, min_capacity=64, max_batch_tokens=512))
    seqs = [seq(f"s{i}", 30 + i, 1000 * (i + 1)) for i in range(8)]
    s.add(seqs)
    for _ in range(120):
        plan = run(s)
        assert plan.num_slots * plan.capacity <= 512
        assert len(s.running) <= plan.num_slots
        assert len({x.slot for x in s.running}) == len(s.running)
        assert all(x.slot is not None and x.slot < plan.num_slots for x in s.running)


def test_a_parked_sequence_frees_its_slot_and_resumes_on_its_own_kv() -> None:
    s = Scheduler(config(max_running=1, max_queue_wait_s=0.001))
    a, b = seq("a", 20), seq("b", 20, 2000)
    s.add([a])
    for _ in range(3):
        run(s)
    s.park(a)
    assert a.state is SeqState.PARKED and a.slot is None and not s.has_work()
    s.add([b])  # the slot a left is free for b ...
    assert b in [ch.seq for ch in run(s).prefills]
    s.finish(b)
    s.resume(a)  # ... and a comes back to the head of the queue, never "overdue" (it was admitted)
    assert s.overdue(now=1e9) == []
    plan = run(s)
    # b took the slot over, so a's cached prefix is gone: it is recomputed, all of it.
    assert [(ch.seq, ch.start) for ch in plan.prefills] == [(a, 0)]


def test_a_parked_sequence_whose_slot_was_kept_takes_its_kv_back_in_place() -> None:
    s = Scheduler(config(max_running=2))
    a = seq("a", 20)
    s.add([a])
    for _ in range(3):
        run(s)
    slot, computed = a.slot, a.num_computed
    s.park(a)
    s.resume(a)
    plan = run(s)
    assert a.slot == slot and not plan.kv_ops
    assert [(ch.seq, ch.start, ch.length) for ch in plan.chunks] == [(a, computed, 1)]
