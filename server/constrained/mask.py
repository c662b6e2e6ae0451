"""The engine's per-sequence token-mask hook, backed by one llguidance matcher."""

from __future__ import annotations

import logging
import threading

import llguidance
import numpy as np
import torch

logger = logging.getLogger(__name__)


class GrammarMask:
    """Called by the sampler before each token of its sequence with the tokens generated so far:
    consumes the new ones, then returns the allowed set. Once the grammar is complete only the
    end-of-sequence tokens remain allowed, so generation ends there (finish_reason "stop")."""

    def __init__(
        self,
        matcher: llguidance.LLMatcher,
        vocab_size: int,
        stop_token_ids: list[int],
        native_lock: threading.Lock,
    ) -> None:
        self._matcher = matcher
        self._native_lock = native_lock  # see GrammarCompiler: llguidance calls are serialized
        self._stop_token_ids = stop_token_ids
        self._vocab_size = vocab_size
        self._consumed = 0
        self._bits = np.zeros((vocab_size + 31) // 32, dtype=np.int32)
        self._failed = False

    def __call__(self, generated: list[int]) -> torch.Tensor | None:
        with self._native_lock:
            for token_id in generated[self._consumed :]:
                if not self._matcher.consume_token(token_id) and not self._failed:
                    self._failed = True  # cannot happen while the mask is applied; logged if it does
                    logger.error("grammar rejected a sampled token: %s", self._matcher.get_error())
            self._consumed = len(generated)
            self._matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        allowed = np.unpackbits(self._bits.view(np.uint8), bitorder="little")[: self._vocab_size].astype(
            np.bool_
        )
        if not allowed.any():  # a matcher in an error state allows nothing: end the sequence instead
            allowed[self._stop_token_ids] = True
        return torch.from_numpy(allowed)
