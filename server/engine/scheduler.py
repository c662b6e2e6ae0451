"""Continuous batching decisions, without a model: who runs this step, with how many tokens.

Each step: running sequences that are decoding feed one token each; sequences still reading their
prompt continue in chunks; waiting sequences are admitted (FIFO) while there are slots and token
budget. The KV layout (slots x capacity) follows the longest sequence within the KV budget; when a
sequence outgrows it and fewer slots fit, the newest running sequences are preempted: they free
their slot and are recomputed from their tokens later (their generated tokens are kept). A
sequence whose reader has fallen behind is parked: it leaves the batch and its slot (its KV stays
there as a cached prefix) until it is resumed, at the head of the queue; it then takes its own
cached KV back in place unless another sequence needed that slot meanwhile.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from server.engine.pins import PinTable
from server.engine.sequence import SeqState, Sequence
from server.engine.slots import MIN_REUSE_TOKENS, PrefixMatch, SlotTable
from server.engine.types import PREFILL_BLOCK, EngineConfig, QueueFull


@dataclass(slots=True)
class Chunk:
    seq: Sequence
    start: int  # first token index fed
    length: int
    # A decode's proposed next tokens (speculation.py), fed after its token and verified by the
    # sampler; the KV of the accepted ones is kept (Scheduler.accept).
    draft: list[int] = field(default_factory=list)

    @property
    def samples(self) -> bool:
        """This chunk ends at the sequence's last token, so its logits give the next token."""
        return self.start + self.length == len(self.seq.token_ids)


@dataclass(slots=True)
class StepPlan:
    num_slots: int
    capacity: int
    # KV operations to apply, in order, before the forward pass: (source slot, target slot, tokens);
    # tokens None moves a running sequence's whole slot, a number copies a reused prefix.
    kv_ops: list[tuple[int, int, int | None]] = field(default_factory=list)
    decodes: list[Chunk] = field(default_factory=list)
    prefills: list[Chunk] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    block: int = PREFILL_BLOCK  # prompt chunks end on multiples of this position (or at the prompt's end)

    @property
    def chunks(self) -> list[Chunk]:
        return self.decodes + self.prefills

    @property
    def empty(self) -> bool:
        return not (self.decodes or self.prefills)


class Scheduler:
    def __init__(self, config: EngineConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.parked: set[Sequence] = set()
        self.pins = PinTable(config.max_pinned_slots, clock)
        self.table = SlotTable(config.max_running, self.pins)
        self.capacity = config.min_capacity
        # Prompt chunks end and cached prefixes are reused on multiples of this (see
        # kv_cache.PrefillSegment): the configured block, or less if the budget left beside a full
        # batch of decodes would not hold one.
        self.block = max(1, min(config.prefill_block, config.max_batch_tokens - config.max_running))
        self.preemptions = 0  # how many times a running sequence was preempted, in all
        self._arrivals = 0

    # --- requests in and out ---------------------------------------------------------------

    def check_room(self, waiting: int, count: int) -> None:
        """Raises QueueFull when `count` more sequences would exceed the waiting limit."""
        if waiting + count > self.config.max_waiting:
            raise QueueFull(f"{waiting} sequences are waiting (limit {self.config.max_waiting})")

    def add(self, seqs: list[Sequence]) -> None:
        """Queues the sequences of one request (the caller checked `check_room` first)."""
        for seq in seqs:
            self._arrivals += 1
            seq.arrival = self._arrivals
            seq.state = SeqState.WAITING
            self.waiting.append(seq)
            for length, ttl_s in seq.cache.pins:
                self.pins.add(seq.token_ids[:length], ttl_s)

    def finish(self, seq: Sequence) -> None:
        """The sequence is done (or aborted): its slot is free for the next step."""
        if seq.state is SeqState.RUNNING:
            self.running.remove(seq)
            self.table.release(seq, keep=seq.cache.keep)
        elif seq.state is SeqState.WAITING:
            self.waiting.remove(seq)
        elif seq.state is SeqState.PARKED:
            self.parked.discard(seq)
        seq.state = SeqState.FINISHED

    def park(self, seq: Sequence) -> None:
        """Takes the sequence out of the batch and the queue; its KV stays in its slot as a cached
        prefix (reused in place on resume, unless another sequence needs the slot first)."""
        if seq.state is SeqState.RUNNING:
            self.running.remove(seq)
            self.table.release(seq, keep=True)
        elif seq.state is SeqState.WAITING:
            self.waiting.remove(seq)
        else:
            return
        seq.num_computed = 0
        seq.parks += 1
        seq.state = SeqState.PARKED
        self.parked.add(seq)

    def resume(self, seq: Sequence) -> None:
        """A parked sequence goes back to the head of the queue (it was admitted before)."""
        if seq.state is not SeqState.PARKED:
            return
        self.parked.discard(seq)
        seq.state = SeqState.WAITING
        self.waiting.appendleft(seq)

    def overdue(self, now: float) -> list[Sequence]:
        """Waiting sequences never admitted within `max_queue_wait_s` of being submitted (a preempted
        sequence has been admitted, and so has every choice of a request one of whose choices has:
        those are never overdue)."""
        limit = self.config.max_queue_wait_s
        if limit is None:
            return []
        return [s for s in self.waiting if s.never_admitted and now - s.enqueued_at > limit]

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # --- one step -----------------------------------------------------------------------------

    def usable_slots(self, capacity: int) -> int:
        return max(1, min(self.config.max_running, self.config.max_kv_tokens // capacity))

    def _capacity_for(self, tokens: int, start: int | None = None) -> int:
        capacity = self.capacity if start is None else start
        while capacity < tokens:
            capacity *= 2
        return min(capacity, max(self.config.context_length, self.config.min_capacity))

    def schedule(self) -> StepPlan:
        plan = StepPlan(0, 0, block=self.block)
        self._fit_layout(plan)
        budget = self.config.max_batch_tokens
        for seq in sorted(self.running, key=lambda s: s.slot or 0):
            if seq.is_decoding:
                plan.decodes.append(Chunk(seq, seq.num_computed, 1))
        budget -= len(plan.decodes)
        budget -= self._propose(plan.decodes, budget)
        for seq in self.running:
            length = 0 if seq.is_decoding else self._chunk_length(seq, budget)
            if length:
                plan.prefills.append(Chunk(seq, seq.num_computed, length))
                budget -= length
        self._admit(plan, budget)
        plan.num_slots, plan.capacity = self.usable_slots(self.capacity), self.capacity
        return plan

    def update(self, plan: StepPlan) -> None:
        """After the forward pass: the scheduled tokens' KV is in the cache (a decode's proposals
        count once they are accepted, see `accept`)."""
        for chunk in plan.chunks:
            chunk.seq.num_computed = chunk.start + chunk.length

    @staticmethod
    def accept(chunk: Chunk, accepted: int) -> None:
        """`accepted` of the decode's proposals were kept: their KV, written by the step, is the
        sequence's (the rest is overwritten later, never read)."""
        chunk.seq.num_computed += accepted
        if chunk.seq.proposer is not None:
            chunk.seq.proposer.record(len(chunk.draft), accepted)

    def _propose(self, decodes: list[Chunk], budget: int) -> int:
        """Proposed tokens for the decodes whose sequences have a proposer, within the step's token
        budget, the slot's capacity, the context and the tokens still to generate; returns how many.
        Prompt lookup proposes only while few sequences decode (`speculation_max_batch`): in a full
        batch each verified row costs about what a decode row does, and a guess saves less than
        that unless nearly all are accepted. A request's own prediction is always proposed."""
        used = 0
        lookup = len(decodes) <= self.config.speculation_max_batch
        for chunk in decodes:
            seq = chunk.seq
            if seq.proposer is None or not (lookup or seq.proposer.from_prediction):
                continue
            length = len(seq.token_ids)
            limit = min(
                budget - used,
                self.capacity - length,
                self.config.context_length - length - 1,
                seq.params.max_tokens - seq.generated - 1,
            )
            if limit <= 0:
                continue
            chunk.draft = seq.proposer.propose(seq.token_ids, seq.num_prompt, limit)[:limit]
            used += len(chunk.draft)
        return used

    def _chunk_length(self, seq: Sequence, budget: int) -> int:
        """The prompt tokens `seq` reads this step: the rest of it if the budget holds it, else up to
        the last block bound the budget reaches (see kv_cache.PrefillSegment)."""
        if seq.pending <= budget:
            return seq.pending
        end = (seq.num_computed + budget) // self.block * self.block
        for low, high in seq.spans:  # never inside a span whose rows see each other's later rows
            if low < end < high:
                end = low // self.block * self.block
                if end <= seq.num_computed:  # it starts this chunk: read it whole, over the budget
                    end = min(len(seq.token_ids), -(-high // self.block) * self.block)
        return max(0, end - seq.num_computed)

    def _fit_layout(self, plan: StepPlan) -> None:
        """Grows the capacity for the longest running sequence; preempts what no longer fits."""
        needed = max((len(s.token_ids) for s in self.running), default=0)
        capacity = self._capacity_for(needed)
        smallest = self._capacity_for(needed, start=self.config.min_capacity)
        if smallest < capacity and self.waiting and self.usable_slots(capacity) < self.config.max_running:
            capacity = smallest  # the long sequences are gone and others wait for slots: shrink back
            self.table.truncate(capacity)
        usable = self.usable_slots(capacity)
        while len(self.running) > usable:
            victim = max(self.running, key=lambda s: s.arrival)
            self._preempt(victim)
            plan.preempted.append(victim)
        self._compact(plan, usable)
        self.capacity = capacity

    def _compact(self, plan: StepPlan, usable: int) -> None:
        """Moves running sequences out of slots the layout is about to lose."""
        self.table.drop_above(usable)
        for seq in sorted(self.running, key=lambda s: s.slot or 0):
            if seq.slot is not None and seq.slot >= usable:
                target = self.table.take(usable)
                assert target is not None, "more running sequences than slots"
                plan.kv_ops.append((seq.slot, target, None))
                self.table.move(seq.slot, target)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.table.release(seq, keep=False)
        seq.num_computed = 0
        seq.preemptions += 1
        self.preemptions += 1
        seq.state = SeqState.WAITING
        self.waiting.appendleft(seq)

    def _admit(self, plan: StepPlan, budget: int) -> None:
        deferred: list[Sequence] = []
        while self.waiting and len(self.running) < self.config.max_running:
            seq = self.waiting[0]
            if budget < min(self.block, seq.pending):
                break  # no room for a chunk that ends on a block bound
            capacity = self._capacity_for(len(seq.token_ids))
            usable = self.usable_slots(capacity)
            if len(self.running) + 1 > usable:
                break  # admitting it would force a preemption: it waits for room instead
            if self._sharing_soon(seq):
                deferred.append(self.waiting.popleft())
                continue
            match = self.table.best_prefix(seq.token_ids, len(seq.token_ids) - 1, usable)
            if not seq.readmitted:  # a sequence back in the batch takes its own KV as it is
                match = _allowed(match, seq.cache.reuse_at)
            match = _aligned(match, self.block, seq.spans)
            target = self._slot_for(match, usable, seq.cache.key)
            if target is None:
                break
            if match is not None and match.adopt and target != match.slot:
                self.table.touch(match.slot)
                match = PrefixMatch(match.slot, match.tokens, adopt=False)
            self.waiting.popleft()
            self.table.assign(target, seq)
            if capacity > self.capacity:
                self.capacity = capacity
                self._compact(plan, usable)
            seq.state = SeqState.RUNNING
            seq.group.admitted = True
            self.running.append(seq)
            if match is not None:
                if not match.adopt:
                    plan.kv_ops.append((match.slot, target, match.tokens))
                seq.num_computed = match.tokens
                if not seq.readmitted:
                    seq.cached_tokens = min(match.tokens, seq.num_prompt)
            length = self._chunk_length(seq, budget)
            plan.prefills.append(Chunk(seq, seq.num_computed, length))
            budget -= length
        self.waiting.extendleft(reversed(deferred))

    def _slot_for(self, match: PrefixMatch | None, usable: int, key: str) -> int | None:
        """The slot a new sequence runs in. A cached entry the prompt continues (the same conversation
        one turn on) is taken over in place. Another reused prefix is copied into a free (or the least
        recently used cached) slot, so the entry's own tail stays for the request that continues it;
        the entry is taken over only when no other slot is left."""
        if match is not None and match.continues:
            return match.slot
        target = self.table.take(usable, avoid=match.slot if match else None, key=key)
        if target is None and match is not None and match.adopt:
            return match.slot
        return target

    def _sharing_soon(self, seq: Sequence) -> bool:
        """A running sequence is still reading a prompt this one shares: wait one step for its KV
        (this is how the `n` choices of one request share a single prefill)."""
        for other in self.running:
            if other.num_computed >= other.num_prompt:
                continue
            shared = min(len(seq.token_ids) - 1, other.num_prompt)
            if shared >= MIN_REUSE_TOKENS and other.token_ids[:shared] == seq.token_ids[:shared]:
                return True
        return False


def _aligned(
    match: PrefixMatch | None, block: int, spans: tuple[tuple[int, int], ...] = ()
) -> PrefixMatch | None:
    """The match cut back to a block bound: the prompt's rows after it are then read in the same
    blocks as without the cache (kv_cache.PrefillSegment), so a cached prompt gets the same answer.
    Never inside a span of rows that see each other's later rows (their keys depend on what follows)."""
    if match is not None:
        for low, high in spans:
            if low < match.tokens < high:
                match = PrefixMatch(match.slot, low, match.adopt, continues=False)
    if match is None:
        return None
    length = match.tokens // block * block
    if length < MIN_REUSE_TOKENS:
        return None
    return match if length == match.tokens else PrefixMatch(match.slot, length, match.adopt, match.continues)


def _allowed(match: PrefixMatch | None, reuse_at: tuple[int, ...] | None) -> PrefixMatch | None:
    """The match cut back to the longest length the request lets it reuse (explicit prompt caching
    reuses a prefix only up to one of its breakpoints)."""
    if match is None or reuse_at is None:
        return match
    length = max((n for n in reuse_at if n <= match.tokens), default=0)
    if length < MIN_REUSE_TOKENS:
        return None
    if length == match.tokens:
        return match
    return PrefixMatch(match.slot, length, match.adopt, continues=False)
