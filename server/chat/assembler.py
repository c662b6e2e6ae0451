"""Per choice: sampled tokens -> text deltas with their logprob entries.

Text that could be the start of a stop string is held back until it is clear it is not one, so a
stop string never reaches the client, even when it spans tokens. A token's logprob entry travels
with the delta that carries the end of the token's text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from openai.types.chat import ChatCompletionTokenLogprob
from openai.types.chat.chat_completion_token_logprob import TopLogprob

from server.chat.detokenizer import IncrementalDecoder
from server.engine.types import SampledToken
from server.models.token_table import TokenTable


@dataclass(slots=True)
class Delta:
    text: str = ""
    logprobs: list[ChatCompletionTokenLogprob] = field(default_factory=list)
    stopped: bool = False  # a stop string was found: the choice is over

    def __bool__(self) -> bool:
        return bool(self.text or self.logprobs or self.stopped)


@dataclass(slots=True)
class _PendingEntry:
    start: int  # offsets into all text decoded so far
    end: int | None  # None while the token's character is still incomplete
    entry: ChatCompletionTokenLogprob


class ChoiceAssembler:
    def __init__(
        self, decoder: IncrementalDecoder, tokens: TokenTable, stop: list[str], logprobs: bool
    ) -> None:
        self._decoder = decoder
        self._tokens = tokens
        self._stop = stop
        self._logprobs = logprobs
        self._held = ""  # decoded text not yet emitted
        self._emitted = 0  # characters emitted so far
        self._entries: list[_PendingEntry] = []
        self.done = False

    def feed(self, token: SampledToken) -> Delta:
        """A generated (non end-of-sequence) token."""
        if self.done:
            return Delta()
        text = self._decoder.push(token.token_id)
        start = self._emitted + len(self._held)
        if self._logprobs:
            self._entries.append(_PendingEntry(start, None, self._entry(token)))
        return self._take(text, final=False)

    def finish(self) -> Delta:
        """The sequence ended (end-of-sequence token or token limit): flush everything."""
        if self.done:
            return Delta()
        return self._take(self._decoder.flush(), final=True)

    def _take(self, text: str, *, final: bool) -> Delta:
        self._held += text
        if final or not self._decoder.incomplete:
            total = self._emitted + len(self._held)
            for pending in self._entries:
                if pending.end is None:
                    pending.end = total
        cut = self._stop_at()
        if cut is not None:
            self.done = True
            return self._emit(cut, stopped=True)
        if final:
            self.done = True
            return self._emit(len(self._held), stopped=False)
        return self._emit(len(self._held) - self._possible_stop_prefix(), stopped=False)

    def _emit(self, count: int, *, stopped: bool) -> Delta:
        text, self._held = self._held[:count], self._held[count:]
        self._emitted += len(text)
        if self.done:
            # At a stop string, the tokens that began before it keep their entries; at the end, all.
            out = [p.entry for p in self._entries if not stopped or p.start < self._emitted]
            self._entries = []
            return Delta(text, out, stopped)
        out = [p.entry for p in self._entries if p.end is not None and p.end <= self._emitted]
        self._entries = [p for p in self._entries if p.end is None or p.end > self._emitted]
        return Delta(text, out, stopped)

    def _stop_at(self) -> int | None:
        found = [i for i in (self._held.find(s) for s in self._stop) if i >= 0]
        return min(found) if found else None

    def _possible_stop_prefix(self) -> int:
        """Length of the longest tail of the held text that a stop string starts with."""
        longest = 0
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(self._held)), longest, -1):
                if self._held.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def _entry(self, token: SampledToken) -> ChatCompletionTokenLogprob:
        info = self._tokens[token.token_id]
        top = []
        for alt in token.top:
            alt_info = self._tokens[alt.token_id]
            top.append(TopLogprob(token=alt_info.text, bytes=alt_info.bytes, logprob=alt.logprob))
        return ChatCompletionTokenLogprob(
            token=info.text, bytes=info.bytes, logprob=token.logprob or 0.0, top_logprobs=top
        )
