"""Grammar text -> a fresh llguidance matcher per sequence; compiled grammars are cached per model."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

import llguidance
import llguidance.hf
import numpy as np
from transformers import PreTrainedTokenizerBase

from server.constrained.mask import GrammarMask, one_line

logger = logging.getLogger(__name__)

CACHE_SIZE = 256
DEFAULT_MAX_GRAMMAR_BYTES = 128 * 1024
# llguidance's resource limits, a quarter of its defaults (measured here: a mask step within ~5 ms,
# building the lexer within ~5 ms). A grammar beyond them fails when it is probed at admission, a
# 400, instead of stalling the engine's steps or failing mid-generation. Errors are one line:
# llguidance's verbose errors carry the parser state and the grammar.
PARSER_LIMITS = {
    "initial_lexer_fuel": 250_000,
    "step_lexer_fuel": 50_000,
    "step_max_items": 12_500,
    "verbose_errors": False,
}
# Allowed first tokens consumed by the probe: resource limits bite on the first steps (a `$ref`
# cycle with no base case, `a{1000000}`, a thousand optional properties all fail on the second).
PROBED_FIRST_TOKENS = 4


class GrammarError(ValueError):
    """The grammar engine cannot enforce this grammar; the message says why."""


def parser_limits() -> llguidance.LLParserLimits:
    return llguidance.LLParserLimits(**PARSER_LIMITS)  # type: ignore[arg-type]


class GrammarCompiler:
    """One per served model: the tokenizer converted for llguidance (a few seconds, done once at
    load) and an LRU of compiled grammars, and of those that failed (a grammar refused once is
    refused again at no cost). A matcher is compiled and probed once per distinct grammar and
    deep-copied (microseconds) for each sequence that uses it. Compiles run on request threads,
    one at a time (llguidance drops the GIL), and masks on the engine's mask thread, each on its
    own matcher; only the cache is shared, so the engine never waits for a compile, however large
    the grammar.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        vocab_size: int,
        stop_token_ids: frozenset[int],
        max_grammar_bytes: int = DEFAULT_MAX_GRAMMAR_BYTES,
    ) -> None:
        self._stop_token_ids = sorted(stop_token_ids)
        self.tokenizer = llguidance.hf.from_tokenizer(
            tokenizer,  # type: ignore[arg-type]  # a fast tokenizer (TokenizersBackend), as transformers 5 loads
            n_vocab=vocab_size,
            eos_token=self._stop_token_ids or None,
        )
        self.vocab_size = vocab_size
        self.max_grammar_bytes = max_grammar_bytes
        self._hf = tokenizer
        self._cache: OrderedDict[str, llguidance.LLMatcher | str] = OrderedDict()
        self._lock = threading.Lock()  # guards the cache
        # Compiles of new grammars queue here; cache hits and masks never wait for one. On a
        # machine with few cores, several compiles at once would take every core from the engine.
        self._compiling = threading.Lock()

    def special_token(self, text: str) -> int | None:
        """The id of `text` when it is one special token of this vocabulary (e.g. Qwen's `<tool_call>`)."""
        ids = self._hf.convert_tokens_to_ids([text])
        token_id = ids[0] if isinstance(ids, list) and ids else None
        if token_id is None or token_id == self._hf.unk_token_id or token_id >= self.vocab_size:
            return None
        return token_id if self.tokenizer.is_special_token(token_id) else None

    def mask(self, grammar: str) -> GrammarMask:
        return GrammarMask(self._prototype(grammar).deep_copy(), self.vocab_size)

    def check(self, grammar: str) -> None:
        self._prototype(grammar)

    def _prototype(self, grammar: str) -> llguidance.LLMatcher:
        cached = self._cached(grammar)
        if cached is None:
            size = len(grammar.encode())
            if size > self.max_grammar_bytes:  # never compiled, never cached
                raise GrammarError(
                    f"as a grammar it takes {size} bytes, more than this server allows "
                    f"({self.max_grammar_bytes}; server.limits.max_grammar_bytes)"
                )
            with self._compiling:  # one compile at a time: at most one core, however many arrive
                cached = self._cached(grammar) or self._compile(grammar)
            with self._lock:
                self._cache[grammar] = cached
                while len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
        if isinstance(cached, str):
            raise GrammarError(cached)
        return cached

    def _cached(self, grammar: str) -> llguidance.LLMatcher | str | None:
        with self._lock:
            cached = self._cache.get(grammar)
            if cached is not None:
                self._cache.move_to_end(grammar)
            return cached

    def _compile(self, grammar: str) -> llguidance.LLMatcher | str:
        """The matcher, probed; or why it cannot be used."""
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0, limits=parser_limits())
        if matcher.is_error():
            return one_line(matcher.get_error())
        return self._probe(matcher) or matcher

    def _probe(self, matcher: llguidance.LLMatcher) -> str | None:
        """Computes the first mask and, after each of the first allowed tokens, the second: a grammar
        that compiles can still exceed the limits there. Runs on the copies; the prototype stays at
        its start."""
        bits = np.zeros((self.vocab_size + 31) // 32, dtype=np.int32)
        first = matcher.deep_copy()
        first.unsafe_compute_mask_ptr(bits.ctypes.data, bits.nbytes)
        if first.is_error():
            return one_line(first.get_error())
        allowed = np.unpackbits(bits.view(np.uint8), bitorder="little")[: self.vocab_size].nonzero()[0]
        if len(allowed) == 0:
            return "it allows no first token"
        for token_id in allowed[:PROBED_FIRST_TOKENS].tolist():
            if token_id in self._stop_token_ids:
                continue
            after = first.deep_copy()
            after.consume_token(token_id)
            if not after.is_error():
                after.unsafe_compute_mask_ptr(bits.ctypes.data, bits.nbytes)
            if after.is_error():
                return one_line(after.get_error())
        return None
