"""A model's reasoning: its format, how its chat template is told how hard to think, and what a
request's `reasoning_effort` becomes for it (template variables, a system-prompt flag, or a 400)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from server.config import ReasoningEffort, ReasoningSettings
from server.parsers.reasoning import ReasoningFormatName, reasoning_format_for_template
from server.protocol.errors import UnsupportedParameter

# How a template takes the switch: a template variable (gpt-oss `reasoning_effort`, Qwen3 and
# SmolLM3 `enable_thinking`, Granite `thinking`), a flag in the system prompt (`/think`,
# `/no_think`), or not at all (the model always thinks: DeepSeek-R1).
Switch = Literal["reasoning_effort", "enable_thinking", "thinking", "system_flag", "always"]
OFF: frozenset[str] = frozenset({"none", "minimal"})
# gpt-oss's efforts: the request's, to the nearest one the model has.
_HARMONY_EFFORT = {
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "high",
    "max": "high",
}
_THINKING_VARIABLE = re.compile(r"\{%-?\s*(?:if|elif)\s+(?:not\s+)?thinking\b")


@dataclass(slots=True, frozen=True)
class ReasoningPlan:
    """What one request's reasoning setting makes of the prompt and of the answer's grammar."""

    template_kwargs: dict[str, Any]
    system_flag: str | None  # appended to the system prompt
    thinks: bool  # whether the answer may open with reasoning (the grammar lets it)


NO_REASONING = ReasoningPlan({}, None, False)


@dataclass(slots=True, frozen=True)
class ReasoningSupport:
    format: ReasoningFormatName | None
    switch: Switch | None
    default_effort: ReasoningEffort | None

    @classmethod
    def for_template(cls, template: str, settings: ReasoningSettings) -> ReasoningSupport:
        if settings.parser == "none":
            return cls(None, None, None)
        found = settings.parser or reasoning_format_for_template(template)
        if found is None:
            return cls(None, None, None)
        return cls(found, _switch(template), settings.default_effort)

    def plan(self, requested: ReasoningEffort | None) -> ReasoningPlan:
        """The request's effort (or the model's default) as the template takes it; a 400 naming
        `reasoning_effort` where the model cannot do it."""
        if self.format is None:
            if requested is not None:
                raise UnsupportedParameter("reasoning_effort", "is not supported: this model does not reason")
            return NO_REASONING
        effort = requested or self.default_effort
        thinks = effort not in OFF
        if effort is None:
            return ReasoningPlan({}, None, True)
        if self.switch == "always" or (self.switch == "reasoning_effort" and effort == "none"):
            if not thinks:
                raise UnsupportedParameter(
                    "reasoning_effort", f"cannot be {effort!r} for this model: it always reasons"
                )
            return ReasoningPlan({}, None, True)
        if self.switch == "reasoning_effort":
            return ReasoningPlan({"reasoning_effort": _HARMONY_EFFORT[effort]}, None, True)
        if self.switch == "system_flag":
            return ReasoningPlan({}, "/think" if thinks else "/no_think", thinks)
        assert self.switch is not None
        return ReasoningPlan({self.switch: thinks}, None, thinks)


def _switch(template: str) -> Switch:
    if "reasoning_effort" in template:
        return "reasoning_effort"
    if "enable_thinking" in template:
        return "enable_thinking"
    if _THINKING_VARIABLE.search(template):
        return "thinking"
    if "/no_think" in template:
        return "system_flag"
    return "always"
