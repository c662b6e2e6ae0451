"""Reasoning formats and switches, found from each family's template; the think parser."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerBase

from server.chat.reasoning import ReasoningSupport
from server.chat.templating import ChatTemplater
from server.config import ReasoningSettings
from server.parsers.base import merge
from server.parsers.events import ParseEvent, Reasoning, ToolCallStart
from server.parsers.hermes import HermesParser
from server.parsers.reasoning import GraniteParser, OutputParser, ThinkParser
from server.protocol.errors import UnsupportedParameter
from server.protocol.request import ChatCompletionRequest

TEMPLATES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"


def support(template: str, **settings: object) -> ReasoningSupport:
    return ReasoningSupport.for_template((TEMPLATES / template).read_text(), ReasoningSettings(**settings))


@pytest.mark.parametrize(
    ("template", "fmt", "switch"),
    [
        ("qwen3.jinja", "think", "enable_thinking"),
        ("smollm3.jinja", "think", "enable_thinking"),
        ("deepseek_r1.jinja", "think", "always"),
        ("granite3_3.jinja", "granite", "thinking"),
        ("gpt_oss.jinja", "harmony", "reasoning_effort"),
        ("qwen2_5.jinja", None, None),
        ("hermes.jinja", None, None),
    ],
)
def test_format_and_switch_are_found_in_the_template(
    template: str, fmt: str | None, switch: str | None
) -> None:
    found = support(template)
    assert (found.format, found.switch) == (fmt, switch)


def test_effort_becomes_what_each_template_takes() -> None:
    qwen3, granite, oss, r1 = (
        support(t) for t in ("qwen3.jinja", "granite3_3.jinja", "gpt_oss.jinja", "deepseek_r1.jinja")
    )
    assert qwen3.plan("none").template_kwargs == {"enable_thinking": False}
    assert qwen3.plan("minimal").template_kwargs == {"enable_thinking": False}
    assert qwen3.plan("low").template_kwargs == {"enable_thinking": True}
    assert qwen3.plan(None).template_kwargs == {}  # the template's own default
    assert granite.plan("high").template_kwargs == {"thinking": True}
    assert oss.plan("medium").template_kwargs == {"reasoning_effort": "medium"}
    assert oss.plan("max").template_kwargs == {"reasoning_effort": "high"}
    assert r1.plan("high").thinks
    for refused, effort in ((r1, "none"), (r1, "minimal"), (oss, "none"), (support("qwen2_5.jinja"), "low")):
        with pytest.raises(UnsupportedParameter) as caught:
            refused.plan(effort)  # type: ignore[arg-type]
        assert caught.value.param == "reasoning_effort"
    assert support("qwen3.jinja", default_effort="none").plan(None).template_kwargs == {
        "enable_thinking": False
    }
    assert support("qwen3.jinja", parser="none").format is None


def test_a_template_switched_by_a_system_flag_gets_it(tokenizer: PreTrainedTokenizerBase) -> None:
    template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
        "{# thinks in <think></think> unless the system prompt says /no_think #}"
    )
    found = ReasoningSupport.for_template(template, ReasoningSettings())
    assert found.switch == "system_flag"
    plan = found.plan("none")
    messages = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        }
    ).messages
    text = (
        ChatTemplater(tokenizer, template).render(messages, (), plan.template_kwargs, plan.system_flag).text
    )
    assert "<system>Be brief. /no_think<user>Hi" in text


def _agent_loop(reasoning_key: str) -> list:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    return ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "Weather?"},
                {
                    "role": "assistant",
                    "content": "",
                    reasoning_key: "I should look it up.",
                    "tool_calls": [call],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {"role": "assistant", "content": "Sunny.", reasoning_key: "It said sunny."},
                {"role": "user", "content": "Thanks"},
                {"role": "assistant", "content": "", reasoning_key: "Polite reply.", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            ],
        }
    ).messages


@pytest.mark.parametrize("reasoning_key", ["reasoning", "reasoning_content"])
def test_reasoning_sent_back_reaches_the_templates_that_read_it(
    tokenizer: PreTrainedTokenizerBase, reasoning_key: str
) -> None:
    """Qwen3 renders the reasoning of turns after the last user message (the agent loop's), and
    drops older ones; gpt-oss writes it on the analysis channel of a call turn; R1 drops it."""
    messages = _agent_loop(reasoning_key)
    qwen3 = ChatTemplater(tokenizer, (TEMPLATES / "qwen3.jinja").read_text()).render(messages).text
    assert "<think>\nPolite reply.\n</think>" in qwen3  # after the last user message: kept
    assert "It said sunny." not in qwen3  # before the last user message: dropped
    oss = ChatTemplater(tokenizer, (TEMPLATES / "gpt_oss.jinja").read_text()).render(messages).text
    assert "<|channel|>analysis<|message|>I should look it up.<|end|>" in oss
    r1 = ChatTemplater(tokenizer, (TEMPLATES / "deepseek_r1.jinja").read_text()).render(messages).text
    assert "I should look it up." not in r1


def _events(parser: OutputParser, text: str, step: int) -> list[ParseEvent]:
    out: list[ParseEvent] = []
    for i in range(0, len(text), step):
        out += parser.feed(text[i : i + step])
    return merge(out + parser.finish())


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_think_parser_splits_however_the_text_arrives(step: int) -> None:
    cases = [
        (ThinkParser(), "<think>\nhmm\n</think>\n\nSunny.", [Reasoning("\nhmm\n"), "Sunny."]),
        (ThinkParser(inside=True), "hmm</think>\n\nSunny.", [Reasoning("hmm"), "Sunny."]),
        (ThinkParser(), "Sunny. <think>no</think>", ["Sunny. <think>no</think>"]),  # not at the start
        (ThinkParser(inside=True), "cut short", [Reasoning("cut short")]),
        (GraniteParser(), "<think>t</think><response>Sunny.</response>", [Reasoning("t"), "Sunny."]),
    ]
    for parser, text, expected in cases:
        assert _events(parser, text, step) == expected


def test_the_answer_after_thinking_goes_on_to_the_tool_parser() -> None:
    call = '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
    parser = ThinkParser(inside=True, inner=HermesParser())
    events = _events(parser, f"plan</think>\n\n{call}", 2)
    assert events[0] == Reasoning("plan") and events[1] == ToolCallStart(0, "f")
    assert parser.calls == 1 and not parser.in_reasoning
