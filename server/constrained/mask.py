"""The engine's per-sequence token-mask hook, backed by one llguidance matcher."""

from __future__ import annotations

import llguidance
import numpy as np
import torch


class GrammarFailure(RuntimeError):
    """The matcher rejected a token or allows none: the sequence cannot go on under its grammar."""


def one_line(error: str, limit: int = 300) -> str:
    """llguidance's error on one line, without the parser state or grammar it may append, cut short."""
    for marker in ("<state>", "<non-verbose/>"):
        error = error.split(marker, 1)[0]
    line = " ".join(error.split())
    return line if len(line) <= limit else line[:limit] + "..."


class GrammarMask:
    """Called by the sampler before each token of its sequence with the tokens generated so far:
    consumes the new ones, then returns the allowed set. Once the grammar is complete only the
    end-of-sequence tokens remain allowed, so generation ends there (finish_reason "stop").

    It never fails open: a matcher in an error state raises, and the sampler ends this sequence
    with an error (the constraint's guarantee would otherwise be silently broken)."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int) -> None:
        self._matcher = matcher
        self._vocab_size = vocab_size
        self._consumed = 0
        self._bits = np.zeros((vocab_size + 31) // 32, dtype=np.int32)

    def __call__(self, generated: list[int]) -> torch.Tensor | None:
        for token_id in generated[self._consumed :]:
            if not self._matcher.consume_token(token_id):
                error = one_line(self._matcher.get_error())
                raise GrammarFailure(f"the grammar rejected token {token_id}: {error}")
        self._consumed = len(generated)
        self._matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        error = one_line(self._matcher.get_error()) if self._matcher.is_error() else ""
        unpacked = np.unpackbits(self._bits.view(np.uint8), bitorder="little")[: self._vocab_size]
        allowed = unpacked.astype(np.bool_)
        if error or not allowed.any():
            raise GrammarFailure(f"the grammar allows no token: {error or 'empty mask'}")
        return torch.from_numpy(allowed)
