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
    deep-copied (microseconds) for each sequence that uses it.

    Every llguidance call, here and in the masks, runs under one lock. Compiles (request threads)
    and masks (the engine thread) would otherwise meet inside the native library, which releases
    the GIL in some calls and not in others: the pattern of GIL-versus-native-lock deadlocks.
    Waiting on a Python lock releases the GIL, so serializing the calls rules that out; a mask
    waits at most for one compile (about a millisecond).
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
        self._lock = threading.Lock()  # guards the cache and every llguidance call

    def special_token(self, text: str) -> int | None:
        """The id of `text` when it is one special token of this vocabulary (e.g. Qwen's `<tool_call>`)."""
        ids = self._hf.convert_tokens_to_ids([text])
        token_id = ids[0] if ids else None
        if token_id is None or token_id == self._hf.unk_token_id or token_id >= self.vocab_size:
            return None
        return token_id if self.tokenizer.is_special_token(token_id) else None

    def mask(self, grammar: str) -> GrammarMask:
        with self._lock:
            matcher = self._prototype(grammar).deep_copy()
        return GrammarMask(matcher, self.vocab_size, self._lock)

    def check(self, grammar: str) -> None:
        with self._lock:
            self._prototype(grammar)

    def _prototype(self, grammar: str) -> llguidance.LLMatcher:
        """Under the lock."""
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
        self._cache[grammar] = matcher
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return matcher
