"""Every tool-call parser on golden strings of its format, fed whole and one character at a time."""

from __future__ import annotations

import json

import pytest

from server.parsers.base import ToolCallParser, merge
from server.parsers.deepseek import DeepSeekParser
from server.parsers.events import ParseEvent, Reasoning, ToolCallArguments, ToolCallStart, ToolSpec
from server.parsers.gemma import GemmaParser
from server.parsers.harmony import HarmonyParser
from server.parsers.hermes import HermesParser
from server.parsers.llama3_json import Llama3JsonParser
from server.parsers.mistral import GraniteParser, MistralParser, Phi4MiniParser
from server.parsers.mistral_args import MistralArgsParser
from server.parsers.pythonic import PythonicParser
from server.parsers.qwen3_xml import Qwen3XmlParser
from server.parsers.registry import parser_for_template

WEATHER = {"city": "Paris", "days": [1, 2], "note": 'say "hi" } ]'}
W = json.dumps(WEATHER)
# What the tools declare (Qwen3-Coder's values are bare text, typed by the schema).
TOOLS = (
    ToolSpec(
        "get_weather",
        {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "array"}, "note": {"type": "string"}},
        },
    ),
)


def calls(events: list[ParseEvent]) -> list[tuple[str, dict]]:
    """(name, parsed arguments) per call, in order."""
    names = {e.index: e.name for e in events if isinstance(e, ToolCallStart)}
    args: dict[int, str] = {}
    for e in events:
        if isinstance(e, ToolCallArguments):
            args[e.index] = args.get(e.index, "") + e.fragment
    return [(names[i], json.loads(args[i])) for i in sorted(names)]


def text(events: list[ParseEvent]) -> str:
    return "".join(e for e in events if isinstance(e, str))


def by_character(
    parser: type[ToolCallParser], output: str, tools: tuple[ToolSpec, ...] = ()
) -> list[ParseEvent]:
    p = parser(tools)
    events: list[ParseEvent] = []
    for ch in output:
        events += p.feed(ch)
    return merge(events + p.finish())


THOUGHT = "<|channel|>analysis<|message|>They want the weather.<|end|><|start|>assistant"
XML_WEATHER = (
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
    '<parameter=days>\n[1, 2]\n</parameter>\n<parameter=note>\nsay "hi" } ]\n</parameter>\n'
    "</function>\n</tool_call>"
)
CASES: list[tuple[type[ToolCallParser], str, str, list[tuple[str, dict]]]] = [
    # parser, model output, expected content, expected calls
    (
        HarmonyParser,
        f"{THOUGHT}<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{W}<|call|>",
        "",
        [("get_weather", WEATHER)],
    ),
    (  # the recipient in the role part, as gpt-oss's template writes calls back
        HarmonyParser,
        f" to=functions.get_weather<|channel|>commentary json<|message|>{W}",
        "",
        [("get_weather", WEATHER)],
    ),
    (HarmonyParser, f"{THOUGHT}<|channel|>final<|message|>Sunny.<|return|>", "Sunny.", []),
    (HarmonyParser, "Plain words, no channels.", "Plain words, no channels.", []),
    (HarmonyParser, "<|channel|>final", "<|channel|>final", []),  # a header cut short
    (Qwen3XmlParser, "Let me look.\n" + XML_WEATHER, "Let me look.\n", [("get_weather", WEATHER)]),
    (Qwen3XmlParser, XML_WEATHER + "\n" + XML_WEATHER, "", [("get_weather", WEATHER)] * 2),
    (Qwen3XmlParser, "<tool_call>\nnot xml\n</tool_call>", "<tool_call>\nnot xml\n</tool_call>", []),
    (Qwen3XmlParser, XML_WEATHER[:60], XML_WEATHER[:60], []),  # cut by the token limit: text
    (
        GemmaParser,
        'Checking.\n```tool_code\nget_weather(city="Paris", days=[1, 2], note=\'say "hi" } ]\')\n```',
        "Checking.\n",
        [("get_weather", WEATHER)],
    ),
    (GemmaParser, "```python\nprint(1)\n```", "```python\nprint(1)\n```", []),
    (GemmaParser, "```tool_code\nnot a call!\n```", "```tool_code\nnot a call!\n```", []),
    (
        DeepSeekParser,
        "Let me check.<｜tool▁calls▁begin｜>"
        f"<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{W}\n```<｜tool▁call▁end｜>"
        "<｜tool▁call▁begin｜>function<｜tool▁sep｜>a\n```json\n{}\n```<｜tool▁call▁end｜>"
        "<｜tool▁calls▁end｜>",
        "Let me check.",
        [("get_weather", WEATHER), ("a", {})],
    ),
    (
        MistralArgsParser,
        f"Sure.[TOOL_CALLS]get_weather[ARGS]{W}[TOOL_CALLS]a[ARGS]{{}}",
        "Sure.",
        [("get_weather", WEATHER), ("a", {})],
    ),
    (
        GraniteParser,
        f'<|tool_call|>[{{"name": "get_weather", "arguments": {W}}}, {{"name": "a", "arguments": {{}}}}]',
        "",
        [("get_weather", WEATHER), ("a", {})],
    ),
    (
        Phi4MiniParser,
        f'Checking.<|tool_call|>[{{"name": "get_weather", "arguments": {W}}}]<|/tool_call|>',
        "Checking.",
        [("get_weather", WEATHER)],
    ),
    (Phi4MiniParser, "No call: <|tool is not one.", "No call: <|tool is not one.", []),
    (
        HermesParser,
        f'<tool_call>\n{{"name": "get_weather", "arguments": {W}}}\n</tool_call>',
        "",
        [("get_weather", WEATHER)],
    ),
    (
        HermesParser,
        f'Let me look.\n<tool_call>\n{{"name": "a", "arguments": {{}}}}\n</tool_call>\n'
        f'<tool_call>\n{{"name": "get_weather", "arguments": {W}}}\n</tool_call>',
        "Let me look.\n",
        [("a", {}), ("get_weather", WEATHER)],
    ),
    (
        HermesParser,
        "No tools needed: 2 < 3 and <tool is not a call.",
        "No tools needed: 2 < 3 and <tool is not a call.",
        [],
    ),
    (HermesParser, "<tool_call>\nnot json\n</tool_call>", "<tool_call>\nnot json\n</tool_call>", []),
    (
        HermesParser,
        '<tool_call>{"arguments": {}, "name": "f"}</tool_call>',
        '<tool_call>{"arguments": {}, "name": "f"}</tool_call>',
        [],
    ),
    (HermesParser, "<tool_call>", "<tool_call>", []),
    (Llama3JsonParser, f'{{"name": "get_weather", "parameters": {W}}}', "", [("get_weather", WEATHER)]),
    (
        Llama3JsonParser,
        f'<|python_tag|>{{"name": "get_weather", "parameters": {W}}}',
        "",
        [("get_weather", WEATHER)],
    ),
    (
        Llama3JsonParser,
        f'{{"name": "a", "parameters": {{}}}}; {{"name": "get_weather", "parameters": {W}}}',
        "",
        [("a", {}), ("get_weather", WEATHER)],
    ),
    (Llama3JsonParser, 'The answer is {"name": "x"} as text.', 'The answer is {"name": "x"} as text.', []),
    (Llama3JsonParser, '{"nome": "x"}', '{"nome": "x"}', []),
    (
        MistralParser,
        f'[TOOL_CALLS][{{"name": "get_weather", "arguments": {W}}}]',
        "",
        [("get_weather", WEATHER)],
    ),
    (
        MistralParser,
        'Sure. [TOOL_CALLS] [{"name": "a", "arguments": {"x": 1}}, '
        f'{{"name": "get_weather", "arguments": {W}}}]',
        "Sure. ",
        [("a", {"x": 1}), ("get_weather", WEATHER)],
    ),
    (MistralParser, "[TOOL_CALLS] oops", "[TOOL_CALLS] oops", []),
    (
        PythonicParser,
        '[get_weather(city="Paris", days=[1, 2], note=\'say "hi" } ]\')]',
        "",
        [("get_weather", WEATHER)],
    ),
    (
        PythonicParser,
        '[a(flag=True, none=None, neg=-2), b(x={"k": false})]',
        "",
        [("a", {"flag": True, "none": None, "neg": -2}), ("b", {"x": {"k": False}})],
    ),
    (PythonicParser, "Paris is sunny [citation needed].", "Paris is sunny [citation needed].", []),
    # Text after the list, arriving in the same piece as its end, comes out once (found by hypothesis).
    (PythonicParser, '[get_weather(city="Paris")] Done.', " Done.", [("get_weather", {"city": "Paris"})]),
    (PythonicParser, "[1, 2, 3]", "[1, 2, 3]", []),
    (PythonicParser, "[get_weather(city=", "[get_weather(city=", []),
]


@pytest.mark.parametrize(("parser", "output", "content", "expected"), CASES)
def test_parser_golden_whole_and_by_character(
    parser: type[ToolCallParser], output: str, content: str, expected: list[tuple[str, dict]]
) -> None:
    whole = parser.parse(output, TOOLS)
    assert text(whole) == content
    assert calls(whole) == expected
    assert by_character(parser, output, TOOLS) == whole


def test_harmony_analysis_is_reasoning_not_content() -> None:
    events = HarmonyParser.parse(f"{THOUGHT}<|channel|>final<|message|>Sunny.")
    assert events == [Reasoning("They want the weather."), "Sunny."]


def test_qwen3_xml_values_are_typed_by_the_tool_schema() -> None:
    """Values are bare text: a string parameter keeps `12` as text, other types read it as JSON."""
    schema = {"type": "object", "properties": {"zip": {"type": "string"}, "n": {"type": "integer"}}}
    body = (
        "<parameter=zip>\n12\n</parameter>\n<parameter=n>\n12\n</parameter>\n<parameter=x>\n1\n</parameter>\n"
    )
    output = f"<tool_call>\n<function=f>\n{body}</function>\n</tool_call>"
    assert calls(Qwen3XmlParser.parse(output, (ToolSpec("f", schema),))) == [
        ("f", {"zip": "12", "n": 12, "x": "1"})
    ]


@pytest.mark.parametrize("parser", [Qwen3XmlParser, GemmaParser, HarmonyParser])
def test_calls_written_for_history_read_back(parser: type[ToolCallParser]) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "array"}}}
    written = parser.write_calls([("get_weather", {"city": "Paris", "days": [1, 2]})])
    if parser is HarmonyParser:  # written as a whole turn; the output starts after its `<|start|>assistant`
        written = written.removeprefix("<|start|>assistant")
    events = parser.parse(written, (ToolSpec("get_weather", schema),))
    assert calls(events) == [("get_weather", {"city": "Paris", "days": [1, 2]})]


def test_arguments_stream_as_they_arrive() -> None:
    p = HermesParser()
    assert p.feed('<tool_call>\n{"name": "get_weather", ') == []
    assert p.feed('"arguments": {"ci') == [ToolCallStart(0, "get_weather"), ToolCallArguments(0, '{"ci')]
    assert p.feed('ty": "Paris"}}\n</tool_call>') == [ToolCallArguments(0, 'ty": "Paris"}')]
    assert p.finish() == []


def test_a_call_cut_by_the_token_limit_keeps_what_was_generated() -> None:
    events = HermesParser.parse('<tool_call>\n{"name": "f", "arguments": {"city": "Par')
    assert events == [ToolCallStart(0, "f"), ToolCallArguments(0, '{"city": "Par')]


def test_blank_space_between_calls_is_not_content() -> None:
    call = '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
    output = f"{call}\n\n{call}\n"
    assert text(HermesParser.parse(output)) == ""
    assert text(HermesParser.parse(output + "Done.")) == "\nDone."


def test_text_after_a_call_is_content() -> None:
    events = HermesParser.parse('<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>\nDone.')
    assert text(events) == "\nDone."


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("... <tool_call> ...", HermesParser),
        (
            'Respond in the format {"name": function name, "parameters": dictionary of argument name ...',
            Llama3JsonParser,
        ),
        ("{{ '[TOOL_CALLS]' }}", MistralParser),
        ("[func_name1(params_name1=params_value1), ...] <|python_tag|>", PythonicParser),
        ("{{ message.content }}", HermesParser),  # no tool support: our Hermes-style prompt
        ("<|start|>assistant<|channel|>final<|message|>", HarmonyParser),
        ("<tool_call>\n<function=example_function_name>", Qwen3XmlParser),
        ("<start_of_turn>user\n", GemmaParser),
    ],
)
def test_parser_is_chosen_from_the_template(template: str, expected: type[ToolCallParser]) -> None:
    assert parser_for_template(template) is expected


def test_models_yaml_can_override_the_parser() -> None:
    assert parser_for_template("... <tool_call> ...", "mistral") is MistralParser


def test_pythonic_values_with_json_surrogate_escapes_become_whole_characters() -> None:
    """The grammar lets a model escape an emoji JSON-style, as a surrogate pair; Python's parser
    keeps the halves apart, and a lone half cannot be sent as UTF-8 (found by hypothesis)."""
    events = PythonicParser.parse('[f(a="\\ud83d\\ude00 x", b="\\ud83d")]')
    assert calls(events) == [("f", {"a": "😀 x", "b": "\ufffd"})]


def test_pythonic_names_python_cannot_parse() -> None:
    """Tools may be named `get-weather`, parameters `from` or `class` or `º` (which Python would
    read as `o`): the grammar writes them as declared, so the parser must read them back."""
    events = PythonicParser.parse('[book(from="Paris", to="a=b(", class="eco"), get-weather(º=None)]')
    assert calls(events) == [
        ("book", {"from": "Paris", "to": "a=b(", "class": "eco"}),
        ("get-weather", {"º": None}),
    ]
