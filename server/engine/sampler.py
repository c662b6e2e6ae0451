"""Turns one sequence's next-token logits into a token, with that request's own parameters.

Order: logit_bias, then presence/frequency penalties (over the tokens generated so far), then
logprobs are read from these adjusted logits (the distribution the token is drawn from, before
temperature and top_p reshape it), then greedy argmax or temperature + top_p + a seeded draw.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import torch

from server.engine.types import SampledToken, SamplingParams, TokenLogprob

# A later grammar stage sets allowed tokens per step: given the generated ids, return a bool mask
# over the vocabulary (True = allowed) or None for "no constraint".
TokenMaskFn = Callable[[list[int]], torch.Tensor | None]


def _seed_for(params: SamplingParams) -> int:
    if params.seed is None:
        return secrets.randbits(63)
    return params.seed & 0x7FFF_FFFF_FFFF_FFFF


class SequenceSampler:
    """Per-sequence sampling state: its RNG, its token counts, its bias vector."""

    def __init__(self, params: SamplingParams, vocab_size: int, mask_fn: TokenMaskFn | None = None) -> None:
        self.params = params
        self.vocab_size = vocab_size
        self.mask_fn = mask_fn
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(_seed_for(params))
        self.generated: list[int] = []
        self._bias: torch.Tensor | None = None
        if params.logit_bias:
            self._bias = torch.zeros(vocab_size, dtype=torch.float32)
            for token_id, value in params.logit_bias:
                self._bias[token_id] = value
        self._penalized = params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
        self._counts = torch.zeros(vocab_size, dtype=torch.float32) if self._penalized else None

    def sample(self, logits: torch.Tensor) -> SampledToken:
        """`logits`: the model's last-position logits for this sequence, shape [vocab]."""
        logits = logits[: self.vocab_size].to(device="cpu", dtype=torch.float32)
        logits = self._adjust(logits)
        params = self.params
        token_id = int(torch.argmax(logits)) if params.greedy else self._draw(logits)
        self.generated.append(token_id)
        if self._counts is not None:
            self._counts[token_id] += 1
        if params.top_logprobs is None:
            return SampledToken(token_id)
        return _with_logprobs(token_id, logits, params.top_logprobs)

    def _adjust(self, logits: torch.Tensor) -> torch.Tensor:
        if self._bias is not None:
            logits = logits + self._bias
        if self._counts is not None:
            params = self.params
            logits = logits - params.frequency_penalty * self._counts
            logits = logits - params.presence_penalty * (self._counts > 0).float()
        if self.mask_fn is not None:
            allowed = self.mask_fn(self.generated)
            if allowed is not None:
                logits = logits.masked_fill(~allowed, float("-inf"))
        return logits

    def _draw(self, logits: torch.Tensor) -> int:
        probs = torch.softmax(logits / self.params.temperature, dim=-1)
        top_p = self.params.top_p
        if top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
            outside = before >= top_p
            outside[0] = False  # the most likely token is always kept (top_p=0 means only it)
            sorted_probs[outside] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=self.generator))


def _with_logprobs(token_id: int, logits: torch.Tensor, k: int) -> SampledToken:
    logprobs = torch.log_softmax(logits, dim=-1)
    top: tuple[TokenLogprob, ...] = ()
    if k > 0:
        values, ids = torch.topk(logprobs, k)
        top = tuple(
            TokenLogprob(int(i), float(v)) for v, i in zip(values.tolist(), ids.tolist(), strict=False)
        )
    return SampledToken(token_id, float(logprobs[token_id]), top)
