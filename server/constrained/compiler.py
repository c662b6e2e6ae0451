"""Grammar text -> a fresh llguidance matcher per sequence; compiled grammars are cached per model."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

import llguidance
import llguidance.hf
from transformers import PreTrainedTokenizerBase

from server.constrained.mask import GrammarMask

logger = logging.getLogger(__name__)

CACHE_SIZE = 256


class GrammarError(ValueError):
    """The grammar engine cannot enforce this grammar; the message says why."""


class GrammarCompiler:
    """One per served model: the tokenizer converted for llguidance (a few seconds, done once at
    load) and an LRU of compiled grammars. A matcher is compiled once per distinct grammar and
    deep-copied (microseconds) for each sequence that uses it. Compiles run on request threads and
    masks on the engine thread, each on its own matcher (llguidance is built for that); only the
    cache is shared, so the engine never waits for a compile, however large the grammar.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, vocab_size: int, stop_token_ids: frozenset[int]
    ) -> None:
        self._stop_token_ids = sorted(stop_token_ids)
        self.tokenizer = llguidance.hf.from_tokenizer(
            tokenizer, n_vocab=vocab_size, eos_token=self._stop_token_ids or None
        )
        self.vocab_size = vocab_size
        self._hf = tokenizer
        self._cache: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()  # guards the cache

    def special_token(self, text: str) -> int | None:
        """The id of `text` when it is one special token of this vocabulary (e.g. Qwen's `<tool_call>`)."""
        ids = self._hf.convert_tokens_to_ids([text])
        token_id = ids[0] if ids else None
        if token_id is None or token_id == self._hf.unk_token_id or token_id >= self.vocab_size:
            return None
        return token_id if self.tokenizer.is_special_token(token_id) else None

    def mask(self, grammar: str) -> GrammarMask:
        return GrammarMask(self._prototype(grammar).deep_copy(), self.vocab_size)

    def check(self, grammar: str) -> None:
        self._prototype(grammar)

    def _prototype(self, grammar: str) -> llguidance.LLMatcher:
        with self._lock:
            cached = self._cache.get(grammar)
            if cached is not None:
                self._cache.move_to_end(grammar)
                return cached
        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.tokenizer)
        if failed:
            raise GrammarError("; ".join(messages))
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise GrammarError(matcher.get_error())
        with self._lock:
            self._cache[grammar] = matcher
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return matcher
