from pathlib import Path

import pytest
from pydantic import TypeAdapter
from transformers import PreTrainedTokenizerBase

from server.chat.templating import ChatTemplater
from server.parsers.events import ToolSpec
from server.protocol.errors import UnsupportedParameter
from server.protocol.request import ChatCompletionRequest, Message

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"

messages_adapter = TypeAdapter(list[Message])


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict], template: str | None = None) -> str:
    return ChatTemplater(tokenizer, template).render(messages_adapter.validate_python(messages)).text


def test_developer_and_system_messages_merge_into_one_leading_system_turn(tokenizer) -> None:
    text = _render(
        tokenizer,
        [
            {"role": "developer", "content": "Rule one."},
            {"role": "user", "content": "Hi"},
            {"role": "system", "content": [{"type": "text", "text": "Rule two."}]},
        ],
    )
    assert text.startswith("<|im_start|>system\nRule one.\n\nRule two.<|im_end|>")
    assert text.count("<|im_start|>system") == 1
    assert text.endswith("<|im_start|>assistant\n")


def test_final_assistant_message_is_continued(tokenizer) -> None:
    text = _render(
        tokenizer, [{"role": "user", "content": "Count"}, {"role": "assistant", "content": "1, 2,"}]
    )
    assert text.endswith("<|im_start|>assistant\n1, 2,")


def test_tool_history_falls_back_to_hermes_style(tokenizer) -> None:
    text = _render(
        tokenizer,
        [
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "function", "name": "get", "content": "rainy"},
        ],
    )
    assert '<tool_call>\n{"name": "get", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert "<tool_response>\nsunny\n</tool_response>" in text
    assert "<tool_response>\nrainy\n</tool_response>" in text


def test_template_with_tool_support_gets_structured_calls(tokenizer) -> None:
    template = (
        "{% for m in messages %}{{ m.role }}:{{ m.content }}"
        "{% for c in m.tool_calls or [] %}"
        "[{{ c.function.name }}({{ c.function.arguments.city }})]"
        "{% endfor %}"
        "{% if m.tool_call_id %}#{{ m.tool_call_id }}{% endif %}|{% endfor %}"
    )
    text = _render(
        tokenizer,
        [
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
        template,
    )
    assert "[get(Paris)]" in text and "tool:sunny#call_1|" in text


def test_refusal_and_name_are_rendered(tokenizer) -> None:
    template = "{% for m in messages %}{{ m.name or '' }}:{{ m.content }}|{% endfor %}"
    text = _render(
        tokenizer,
        [
            {"role": "user", "content": "x", "name": "alice"},
            {"role": "assistant", "refusal": "I can't."},
            {"role": "user", "content": "y"},
        ],
        template,
    )
    assert text == "alice:x|:I can't.|:y|"


def test_image_parts_are_refused_naming_the_part(tokenizer) -> None:
    with pytest.raises(UnsupportedParameter) as info:
        _render(
            tokenizer,
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "a"},
                        {"type": "image_url", "image_url": {"url": "x"}},
                    ],
                }
            ],
        )
    assert info.value.param == "messages[0].content[1]"


@pytest.mark.parametrize(
    ("template", "tools_from"),
    [
        ("phi4_mini.jinja", "system message"),
        ("qwen2_5.jinja", "variable"),
        ("mistral.jinja", "variable"),
    ],
)
def test_where_a_template_reads_tools_is_found_by_rendering(
    tokenizer: PreTrainedTokenizerBase, template: str, tools_from: str
) -> None:
    templater = ChatTemplater(tokenizer, (FIXTURES / template).read_text())
    assert templater.tools_from == tools_from
    messages = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "Weather?"}]}
    ).messages
    tool = ToolSpec(
        "get_weather", {"type": "object", "properties": {"city": {"type": "string"}}}, "Weather now"
    )
    text = templater.render(messages, (tool,)).text
    assert "get_weather" in text and "Weather now" in text


def test_a_template_that_mentions_tools_but_drops_them_gets_our_tool_prompt(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    template = (
        "{# tools are for another day #}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    )
    templater = ChatTemplater(tokenizer, template)
    assert templater.tools_from == "prompt"
    messages = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "Weather?"}]}
    ).messages
    text = templater.render(messages, (ToolSpec("get_weather", {"type": "object"}, None),)).text
    assert "<tools>" in text and "get_weather" in text


def test_a_template_that_refuses_a_system_turn_gets_it_in_the_first_user_turn(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """Gemma 2's template raises on a system message: the system prompt (with our tool prompt in
    it) opens the first user turn, as Gemma's own documentation does it."""
    templater = ChatTemplater(tokenizer, (FIXTURES / "gemma2.jinja").read_text())
    assert not templater.takes_system
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather?"}]
    text = _render(tokenizer, messages, (FIXTURES / "gemma2.jinja").read_text())
    assert "<start_of_turn>user\nBe brief.\n\nWeather?<end_of_turn>" in text
    request = messages_adapter.validate_python([{"role": "user", "content": "Weather?"}])
    with_tools = templater.render(request, (ToolSpec("get_weather", {"type": "object"}, None),)).text
    assert with_tools.index("get_weather") < with_tools.index("Weather?")
    assert ChatTemplater(tokenizer, (FIXTURES / "gemma3.jinja").read_text()).takes_system
