"""One choice from engine outputs to wire deltas, and the one place its finish_reason is decided.

detokenize and stop strings (ChoiceAssembler) -> the model's output format (reasoning and tool
calls, OutputDeltas) -> deltas with their logprobs. The pipeline also counts the choice's tokens
(and those spent reasoning). A non-stream answer is the fold of the same deltas.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from openai.types.chat import ChatCompletionTokenLogprob
from openai.types.chat.chat_completion_chunk import ChoiceDelta

from server.chat.assembler import ChoiceAssembler, Delta
from server.chat.deltas import OutputDeltas
from server.engine.types import FinishReason, StepOutput
from server.protocol.errors import InternalError, RateLimited, ShuttingDown


@dataclass(slots=True)
class ChoiceStep:
    """What one engine output makes of a choice: deltas to send (the logprobs of the step's token
    travel with the first), whether the engine must stop generating it (a stop string was found),
    and, once it is over, its finish_reason."""

    deltas: list[ChoiceDelta] = field(default_factory=list)
    logprobs: list[ChatCompletionTokenLogprob] = field(default_factory=list)
    stop_generating: bool = False
    finish_reason: str | None = None
    # Why the engine ended it, for the metrics: "timeout" when the request's deadline passed.
    ended_as: str | None = None


class ChoicePipeline:
    def __init__(self, assembler: ChoiceAssembler, output: OutputDeltas) -> None:
        self._assembler = assembler
        self._output = output
        self.completion_tokens = 0
        self.reasoning_tokens = 0
        self.accepted_prediction_tokens = 0
        self.rejected_prediction_tokens = 0

    def step(self, out: StepOutput) -> ChoiceStep:
        """Raises for outputs that end the whole request (queue timeout, shutdown, engine failure)."""
        reason = out.finish_reason
        if reason is FinishReason.QUEUE_TIMEOUT:
            raise RateLimited("The server is busy: the request waited too long for a place; retry shortly.")
        if reason is FinishReason.ABORT:
            raise ShuttingDown("The server is shutting down; this generation was cancelled.")
        if reason is FinishReason.ERROR or out.error is not None:
            raise InternalError(f"Generation failed: {out.error}")
        delta = Delta()
        self.accepted_prediction_tokens += out.accepted_prediction
        self.rejected_prediction_tokens += out.rejected_prediction
        if out.token is not None:
            self.completion_tokens += 1
            if reason is not FinishReason.STOP:  # an end-of-sequence token has no text
                delta = self._assembler.feed(out.token)
        if reason is None and not delta.stopped:
            return self._deltas(delta, out, finished=False)
        if not delta.stopped:
            tail = self._assembler.finish()
            delta = Delta(delta.text + tail.text, delta.logprobs + tail.logprobs, tail.stopped)
        return self._deltas(delta, out, finished=True)

    def _deltas(self, delta: Delta, out: StepOutput, finished: bool) -> ChoiceStep:
        reasoning_before = self._output.in_reasoning
        deltas = self._output.feed(delta.text)
        if out.token is not None and (reasoning_before or self._output.in_reasoning):
            self.reasoning_tokens += 1
        step = ChoiceStep(deltas, delta.logprobs)
        if not finished:
            return self._with_logprobs(step)
        # The one decision: a stop string or an end-of-sequence token is "stop"; the token limit,
        # or a deadline, "length"; a stop that ends calls becomes "tool_calls" (or "function_call").
        ended = "stop" if delta.stopped or out.finish_reason is FinishReason.STOP else "length"
        step.deltas += self._output.finish(ended)
        step.stop_generating = delta.stopped
        step.finish_reason = self._output.finish_reason(ended)
        step.ended_as = "timeout" if out.finish_reason is FinishReason.TIMEOUT else step.finish_reason
        return self._with_logprobs(step)

    @staticmethod
    def _with_logprobs(step: ChoiceStep) -> ChoiceStep:
        """Logprobs need a delta to travel with, even when the token's text is held back."""
        if not step.deltas and step.logprobs:
            step.deltas = [ChoiceDelta(content="")]
        return step
