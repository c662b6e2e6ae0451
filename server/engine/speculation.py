"""Where proposed tokens come from (speculative decoding): no tensors, plain token lists.

A proposer suggests the next few tokens of a sequence; one engine step then runs the model over the
last accepted token and the proposals together, and the sampler keeps the proposals it would have
produced itself (sampler.SequenceSampler.verify), so the output is the same as without them.

- `PredictionProposer`: the request's `prediction` (the text the answer is expected to repeat,
  e.g. a file being edited), kept aligned with what has been generated: while the output follows
  it, its next tokens; after a divergence, the continuation of the place where the last few
  generated tokens occur in it again (the edit is over and the output re-joins the prediction).
- `NgramProposer`: prompt lookup. The continuation of the most recent earlier occurrence of the
  sequence's last tokens, in its prompt and output (answers that quote their prompt, code that
  repeats itself).

Both adapt how many tokens they propose (`Budget`): a run of accepted proposals lets the next one
be longer (doubling), a rejection cuts it back to what was accepted, and proposals that keep failing
are paused for a growing number of steps, so a batch does not pay for guesses that do not land.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from server.engine.types import EngineConfig, EngineRequest

# Fewest trailing tokens that re-align a diverged output with its prediction, and most tried.
ALIGN_MIN = 3
ALIGN_MAX = 8
MAX_PAUSE = 16  # steps without proposals after proposals kept failing, at most


@dataclass(slots=True)
class Budget:
    """How many tokens to propose next: up to `limit`, adapted to how the last proposals fared."""

    limit: int
    size: int = 0
    failures: int = 0  # verifications in a row in which nothing was accepted
    pause: int = 0  # steps left without proposals

    def __post_init__(self) -> None:
        self.size = self.limit

    def rejoin(self) -> None:
        """A new run of proposals after a divergence: short first (a chance match costs little),
        doubling while they are accepted."""
        self.size = min(self.limit, 2)

    def allowed(self) -> int:
        if self.pause > 0:
            self.pause -= 1
            return 0
        return self.size

    def record(self, proposed: int, accepted: int) -> None:
        if proposed == 0:
            return
        if accepted == proposed:
            self.size = min(self.limit, self.size * 2)
            self.failures = 0
            return
        self.size = max(1, accepted + 1)
        if accepted:
            self.failures = 0
            return
        self.failures += 1
        if self.failures >= 2:
            self.pause = min(MAX_PAUSE, 2 ** (self.failures - 2))


class Proposer(Protocol):
    from_prediction: bool  # its proposals count as the request's prediction tokens (usage)

    def propose(self, tokens: list[int], num_prompt: int, limit: int) -> list[int]:
        """Up to `limit` tokens expected after `tokens` (the prompt, then the output so far)."""
        ...

    def record(self, proposed: int, accepted: int) -> None:
        """How the last proposal fared: `accepted` of its first tokens were kept."""
        ...


@dataclass(slots=True)
class PredictionProposer:
    prediction: list[int]
    budget: Budget
    from_prediction: bool = True
    _next: int = 0  # where in the prediction the next generated token is expected
    _anchor: int = 0  # that position when the output last followed the prediction
    _seen: int = 0  # generated tokens already followed

    def propose(self, tokens: list[int], num_prompt: int, limit: int) -> list[int]:
        self._follow(tokens, num_prompt)
        count = min(limit, self.budget.allowed())
        if count <= 0 or self._next >= len(self.prediction):
            return []
        return self.prediction[self._next : self._next + count]

    def record(self, proposed: int, accepted: int) -> None:
        self.budget.record(proposed, accepted)

    def _follow(self, tokens: list[int], num_prompt: int) -> None:
        """Moves the expected position along the tokens generated since the last call (read in
        place: the output is never copied)."""
        prediction = self.prediction
        for index in range(num_prompt + self._seen, len(tokens)):
            token = tokens[index]
            if self._next < len(prediction) and prediction[self._next] == token:
                self._next += 1
                self._anchor = self._next
                continue
            lost = self._next >= len(prediction)
            self._next = self._realign(tokens[max(num_prompt, index + 1 - ALIGN_MAX) : index + 1])
            if self._next < len(prediction):
                self._anchor = self._next
                if lost:  # the output has re-joined the prediction: proposals start short again
                    self.budget.rejoin()
        self._seen = len(tokens) - num_prompt

    def _realign(self, tail: list[int]) -> int:
        """After the output's last tokens (`tail`, at most ALIGN_MAX): the position following the
        longest run of them (at least ALIGN_MIN) found in the prediction, the first one after where
        the output last followed it preferred; past the end of the prediction if they occur nowhere
        (until they do)."""
        prediction = self.prediction
        for size in range(len(tail), ALIGN_MIN - 1, -1):
            found = _find_all(prediction, tail[-size:])
            if found:
                after = [start for start in found if start + size > self._anchor]
                start = after[0] if after else found[-1]
                return start + size
        return len(prediction)


def _find_all(haystack: list[int], needle: list[int]) -> list[int]:
    first, size = needle[0], len(needle)
    starts: list[int] = []
    index = -1
    while True:
        try:
            index = haystack.index(first, index + 1)
        except ValueError:
            return starts
        if haystack[index : index + size] == needle:
            starts.append(index)


@dataclass(slots=True)
class NgramProposer:
    """Prompt lookup over n-grams of `ngram` tokens (then shorter ones, down to `min_ngram`)."""

    budget: Budget
    ngram: int = 3
    min_ngram: int = 2
    from_prediction: bool = False
    # n-gram -> index just after its most recent occurrence, for every n in min_ngram..ngram;
    # built incrementally, `_indexed` tokens so far.
    _after: dict[tuple[int, ...], int] = field(default_factory=dict)
    _indexed: int = 0

    def propose(self, tokens: list[int], num_prompt: int, limit: int) -> list[int]:
        # Index every n-gram that ends before the last token: the last n-gram itself must not be
        # found as its own earlier occurrence.
        self._index(tokens, len(tokens) - 1)
        count = min(limit, self.budget.allowed())
        if count <= 0:
            return []
        for n in range(self.ngram, self.min_ngram - 1, -1):
            if len(tokens) < n:
                continue
            after = self._after.get(tuple(tokens[-n:]))
            if after is not None:
                return _before_media(tokens[after : after + count])
        return []

    def record(self, proposed: int, accepted: int) -> None:
        self.budget.record(proposed, accepted)

    def _index(self, tokens: list[int], end: int) -> None:
        for stop in range(max(self._indexed, self.min_ngram), end + 1):
            for n in range(self.min_ngram, self.ngram + 1):
                if stop >= n:
                    self._after[tuple(tokens[stop - n : stop])] = stop
        self._indexed = max(self._indexed, end + 1)


def _before_media(proposal: list[int]) -> list[int]:
    """A proposal up to the first prompt position an image or audio row stands at (a negative id:
    never a token the model can sample)."""
    for index, token in enumerate(proposal):
        if token < 0:
            return proposal[:index]
    return proposal


def proposer_for(request: EngineRequest, config: EngineConfig) -> Proposer | None:
    """The request's prediction if it has one, else prompt lookup where the model has it on."""
    if request.prediction:
        return PredictionProposer(list(request.prediction), Budget(config.prediction_tokens))
    if config.speculation == "ngram" and config.speculative_tokens > 0:
        return NgramProposer(Budget(config.speculative_tokens))
    return None
