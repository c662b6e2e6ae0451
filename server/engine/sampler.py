"""Turns next-token logits into tokens, each sequence with its own parameters, in one batch.

Per row: logit_bias, then presence/frequency penalties (over the tokens generated so far), then the
grammar mask hook; logprobs are read from these adjusted logits (the distribution the token is
drawn from, before temperature and top_p reshape it); then greedy argmax, or temperature, top_p
and a draw from the sequence's own seeded generator, so a seed gives the same tokens whatever
else shares the batch.

A draw takes the same amount of noise from the generator at every generated position, so that
proposed tokens (speculative decoding, `verify`) change nothing: a proposal is accepted when the
token the sampler picks at its position with that position's noise is the proposal. Greedy or
seeded, the output is the same token for token as without proposals, and a proposal x is accepted
with probability p(x), as standard speculative sampling of a point-mass draft does.
"""

from __future__ import annotations

import secrets
from concurrent.futures import Executor, Future

import torch

from server.engine.types import SampledToken, SamplingParams, TokenLogprob, TokenMaskFn

# Reported for tokens a mask or a -100 bias rules out (JSON has no -inf); OpenAI reports the same.
MIN_LOGPROB = -9999.0


def _seed_for(params: SamplingParams) -> int:
    if params.seed is None:
        return secrets.randbits(63)
    return params.seed & 0x7FFF_FFFF_FFFF_FFFF


class SequenceSampler:
    """Per-sequence sampling state: its RNG, its token counts, its bias vector, its mask hook."""

    def __init__(self, params: SamplingParams, vocab_size: int, mask_fn: TokenMaskFn | None = None) -> None:
        self.params = params
        self.vocab_size = vocab_size
        self.mask_fn = mask_fn
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(_seed_for(params))
        self.generated: list[int] = []
        self.failure: str | None = None  # the mask hook failed: the engine ends this sequence alone
        self._mask: Future[torch.Tensor | None] | None = None  # computing while the forward pass runs
        self._bias: torch.Tensor | None = None
        if params.logit_bias:
            self._bias = torch.zeros(vocab_size, dtype=torch.float32)
            for token_id, value in params.logit_bias:
                self._bias[token_id] = value
        penalized = params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
        self._counts = torch.zeros(vocab_size, dtype=torch.float32) if penalized else None

    def sample(self, logits: torch.Tensor) -> SampledToken:
        """One sequence alone: `logits` is its [vocab] row."""
        return sample_batch([self], logits.unsqueeze(0))[0]

    def start_mask(self, executor: Executor) -> None:
        """Starts computing the next token's mask (it depends only on the tokens so far) on
        `executor`, so that it is ready when the logits are: a costly grammar then costs the
        step the longer of the two, not their sum. `generated` is passed as it is, not copied
        (a copy per token would grow with the output): it is appended to only after the mask
        has been taken."""
        if self.mask_fn is not None and self.failure is None:
            self._mask = executor.submit(self.mask_fn, self.generated)

    def _allowed(self) -> torch.Tensor | None:
        assert self.mask_fn is not None
        pending, self._mask = self._mask, None
        return pending.result() if pending is not None else self.mask_fn(self.generated)

    @property
    def adjusts(self) -> bool:
        return self._bias is not None or self._counts is not None or self.mask_fn is not None

    def adjust_(self, row: torch.Tensor) -> None:
        """Bias, penalties and the mask, in place on this sequence's logits row."""
        if self._bias is not None:
            row += self._bias
        if self._counts is not None:
            row -= self.params.frequency_penalty * self._counts
            row -= self.params.presence_penalty * (self._counts > 0).float()
        if self.mask_fn is not None and self.failure is None:
            try:
                allowed = self._allowed()
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:
                self.failure = f"the output constraint failed: {type(exc).__name__}: {exc}"
                return
            if allowed is not None:
                row.masked_fill_(~allowed, float("-inf"))

    def verify(self, rows: torch.Tensor, proposed: list[int]) -> list[SampledToken]:
        """`rows`: [1 + len(proposed), >= vocab] logits, row i after the proposals before i. Returns
        the tokens the sampler emits, one row at a time: each proposal as long as the sampler picks
        it, then the token it picks instead (or the one after every proposal): 1 to
        len(proposed) + 1 tokens. Row 0 uses the mask started for this step; later rows' masks
        follow the accepted proposals."""
        out: list[SampledToken] = []
        for i in range(len(proposed) + 1):
            token = sample_batch([self], rows[i : i + 1])[0]
            out.append(token)
            if i == len(proposed) or token.token_id != proposed[i] or self.failure is not None:
                break
        return out

    def record(self, token_id: int) -> None:
        self.generated.append(token_id)
        if self._counts is not None:
            self._counts[token_id] += 1


def sample_batch(samplers: list[SequenceSampler], logits: torch.Tensor) -> list[SampledToken]:
    """`logits`: [rows, >= vocab] float32 on the CPU, row i for samplers[i]."""
    vocab = samplers[0].vocab_size if samplers else logits.shape[-1]
    logits = logits[:, :vocab].clone()
    for row, sampler in enumerate(samplers):
        if sampler.adjusts:
            sampler.adjust_(logits[row])
    chosen = torch.empty(len(samplers), dtype=torch.long)
    greedy = [i for i, s in enumerate(samplers) if s.params.greedy]
    if greedy:
        chosen[greedy] = torch.argmax(logits[greedy], dim=-1)
    drawn = [i for i, s in enumerate(samplers) if not s.params.greedy]
    if drawn:
        chosen[drawn] = _draw(logits[drawn], [samplers[i] for i in drawn])
    token_ids = chosen.tolist()
    for sampler, token_id in zip(samplers, token_ids, strict=True):
        sampler.record(token_id)
    out = [SampledToken(t) for t in token_ids]
    wanted = [i for i, s in enumerate(samplers) if s.params.top_logprobs is not None]
    if not wanted:
        return out
    logprobs = torch.log_softmax(logits[wanted], dim=-1).clamp_(min=MIN_LOGPROB)
    k = max(samplers[i].params.top_logprobs or 0 for i in wanted)
    top_values, top_ids = torch.topk(logprobs, k, dim=-1) if k else (None, None)
    for n, row in enumerate(wanted):
        count = samplers[row].params.top_logprobs or 0
        top: tuple[TokenLogprob, ...] = ()
        if count and top_values is not None and top_ids is not None:
            pairs = zip(top_ids[n, :count].tolist(), top_values[n, :count].tolist(), strict=True)
            top = tuple(TokenLogprob(i, v) for i, v in pairs)
        out[row] = SampledToken(token_ids[row], float(logprobs[n, token_ids[row]]), top)
    return out


def _draw(logits: torch.Tensor, samplers: list[SequenceSampler]) -> torch.Tensor:
    """One token per row from its temperature/top_p distribution, with noise from the row's own
    generator."""
    temperatures = torch.tensor([s.params.temperature for s in samplers], dtype=torch.float32)
    probs = torch.softmax(logits / temperatures.unsqueeze(1), dim=-1)
    top_p = torch.tensor([s.params.top_p for s in samplers], dtype=torch.float32)
    nucleus = (top_p < 1.0).nonzero().flatten().tolist()
    if nucleus:
        sorted_probs, order = torch.sort(probs[nucleus], dim=-1, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        outside = before >= top_p[nucleus].unsqueeze(1)
        outside[:, 0] = False  # the most likely token is always kept (top_p=0 means only it)
        sorted_probs.masked_fill_(outside, 0.0)
        probs[nucleus] = torch.zeros_like(sorted_probs).scatter_(1, order, sorted_probs)
    # An exponential race (what torch.multinomial does for one sample): one noise vector per row
    # from the row's generator, the token whose probability over its noise is largest. A token of
    # probability 0 never wins; a tiny change in the logits changes the pick only near a tie.
    noise = torch.stack([torch.empty(probs.shape[-1]).exponential_(generator=s.generator) for s in samplers])
    return torch.argmax(probs / noise, dim=-1)
