"""Each format's call grammar, run on the real tokenizer: valid calls pass, anything else is masked."""

from __future__ import annotations

import copy
import json

import pytest
from transformers import PreTrainedTokenizerBase

from server.constrained.compiler import GrammarCompiler, GrammarError
from server.constrained.json_schema import lark_json, schema_grammar
from server.constrained.mask import GrammarFailure, one_line
from server.models.token_table import TokenTable
from server.parsers.base import ToolCallParser
from server.parsers.deepseek import DeepSeekParser
from server.parsers.events import CallGrammar, ToolSpec
from server.parsers.gemma import GemmaParser
from server.parsers.harmony import HarmonyParser
from server.parsers.hermes import HermesParser
from server.parsers.llama3_json import Llama3JsonParser
from server.parsers.mistral import GraniteParser, MistralParser, Phi4MiniParser
from server.parsers.mistral_args import MistralArgsParser
from server.parsers.pythonic import PythonicParser
from server.parsers.qwen3_xml import Qwen3XmlParser

WEATHER = ToolSpec(
    "get_weather",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
)
TIME = ToolSpec(
    "get_time", {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}
)

# One call in each format: (good call, call of an undeclared function, call with invalid arguments).
# One DeepSeek call in its calls block: `{}` is the name, the fence and the arguments.
DS = (
    "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>{}<｜tool▁call▁end｜>"
    "<｜tool▁calls▁end｜>"
)
HARMONY = "<|channel|>commentary to=functions.{} <|constrain|>json<|message|>{}"
XML = "<tool_call>\n<function={}>\n{}</function>\n</tool_call>"
CITY_C = "<parameter=city>\nParis\n</parameter>\n<parameter=unit>\nc\n</parameter>\n"
CALLS: dict[type[ToolCallParser], tuple[str, str, str, str]] = {
    HarmonyParser: (
        HARMONY.format("get_weather", '{"city": "Paris", "unit": "c"}'),
        HARMONY.format("get_time", '{"zone": "CET"}'),
        HARMONY.format("nope", "{}"),
        HARMONY.format("get_weather", '{"unit": "k"}'),
    ),
    Qwen3XmlParser: (
        XML.format("get_weather", CITY_C),
        XML.format("get_time", "<parameter=zone>\nCET\n</parameter>\n"),
        XML.format("nope", ""),
        XML.format("get_weather", "<parameter=unit>\nk\n</parameter>\n"),
    ),
    GemmaParser: (
        '```tool_code\nget_weather(city="Paris", unit="c")\n```',
        '```tool_code\nget_time(zone="CET")\n```',
        "```tool_code\nnope()\n```",
        '```tool_code\nget_weather(unit="k")\n```',
    ),
    HermesParser: (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>',
        '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>',
        '<tool_call>\n{"name": "nope", "arguments": {}}\n</tool_call>',
        '<tool_call>\n{"name": "get_weather", "arguments": {"unit": "k"}}\n</tool_call>',
    ),
    Llama3JsonParser: (
        '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}}',
        '{"name": "get_time", "parameters": {"zone": "CET"}}',
        '{"name": "nope", "parameters": {}}',
        '{"name": "get_weather", "parameters": {"unit": "k"}}',
    ),
    MistralParser: (
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}]',
        '[TOOL_CALLS][{"name": "get_time", "arguments": {"zone": "CET"}}]',
        '[TOOL_CALLS][{"name": "nope", "arguments": {}}]',
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"unit": "k"}}]',
    ),
    DeepSeekParser: (
        DS.format('get_weather\n```json\n{"city": "Paris", "unit": "c"}\n```'),
        DS.format('get_time\n```json\n{"zone": "CET"}\n```'),
        DS.format("nope\n```json\n{}\n```"),
        DS.format('get_weather\n```json\n{"unit": "k"}\n```'),
    ),
    MistralArgsParser: (
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "c"}',
        '[TOOL_CALLS]get_time[ARGS]{"zone": "CET"}',
        "[TOOL_CALLS]nope[ARGS]{}",
        '[TOOL_CALLS]get_weather[ARGS]{"unit": "k"}',
    ),
    GraniteParser: (
        '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}]',
        '<|tool_call|>[{"name": "get_time", "arguments": {"zone": "CET"}}]',
        '<|tool_call|>[{"name": "nope", "arguments": {}}]',
        '<|tool_call|>[{"name": "get_weather", "arguments": {"unit": "k"}}]',
    ),
    Phi4MiniParser: (
        '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}]<|/tool_call|>',
        '<|tool_call|>[{"name": "get_time", "arguments": {"zone": "CET"}}]<|/tool_call|>',
        '<|tool_call|>[{"name": "nope", "arguments": {}}]<|/tool_call|>',
        '<|tool_call|>[{"name": "get_weather", "arguments": {"unit": "k"}}]<|/tool_call|>',
    ),
    PythonicParser: (
        '[get_weather(city="Paris", unit="c")]',
        '[get_time(zone="CET")]',
        "[nope()]",
        '[get_weather(unit="k")]',
    ),
}
TWO_CALLS = {
    HarmonyParser: lambda a, b: f"{a}{b}",  # never allowed: a harmony turn ends at its call
    Qwen3XmlParser: lambda a, b: f"{a}\n{b}",
    GemmaParser: lambda a, b: f"{a}\n{b}",
    HermesParser: lambda a, b: f"{a}\n{b}",
    Llama3JsonParser: lambda a, b: f"{a}; {b}",
    MistralParser: lambda a, b: a[:-1] + ", " + b[len("[TOOL_CALLS][") :],
    GraniteParser: lambda a, b: a[:-1] + ", " + b[len("<|tool_call|>[") :],
    MistralArgsParser: lambda a, b: a + b,
    DeepSeekParser: lambda a, b: a[: -len("<｜tool▁calls▁end｜>")] + b[len("<｜tool▁calls▁begin｜>") :],
    Phi4MiniParser: lambda a, b: a[: -len("]<|/tool_call|>")] + ", " + b[len("<|tool_call|>[") :],
    PythonicParser: lambda a, b: a[:-1] + ", " + b[1:],
}


@pytest.fixture(scope="module")
def compiler(tokenizer: PreTrainedTokenizerBase) -> GrammarCompiler:
    return GrammarCompiler(tokenizer, len(tokenizer), frozenset({tokenizer.eos_token_id}))


_TOKEN_BYTES: dict[int, list[bytes]] = {}


def token_bytes(tokenizer: PreTrainedTokenizerBase) -> list[bytes]:
    if id(tokenizer) not in _TOKEN_BYTES:
        table = TokenTable(tokenizer, len(tokenizer))
        infos = [table[i] for i in range(len(tokenizer))]
        # Special tokens have no bytes of their own: they stand for their literal text here.
        _TOKEN_BYTES[id(tokenizer)] = [bytes(i.bytes) if i.bytes else i.text.encode() for i in infos]
    return _TOKEN_BYTES[id(tokenizer)]


def accepts(compiler: GrammarCompiler, tokenizer: PreTrainedTokenizerBase, grammar: str, text: str) -> bool:
    """Whether sampling under `grammar` can write exactly `text` and then end: at each step the
    longest allowed token that continues the text is taken."""
    pieces = token_bytes(tokenizer)
    mask = compiler.mask(grammar)
    generated: list[int] = []
    rest = text.encode()
    while rest:
        allowed = mask(generated).nonzero().flatten().tolist()
        fitting = [t for t in allowed if pieces[t] and rest.startswith(pieces[t])]
        if not fitting:
            return False
        best = max(fitting, key=lambda t: len(pieces[t]))
        generated.append(best)
        rest = rest[len(pieces[best]) :]
    return bool(mask(generated)[tokenizer.eos_token_id])


def grammar(compiler: GrammarCompiler, parser: type[ToolCallParser], **spec: object) -> str:
    fields = {"tools": (WEATHER, TIME), "required": True, "parallel": True, **spec}
    return parser.grammar(CallGrammar(**fields), compiler.special_token)  # type: ignore[arg-type]


@pytest.mark.parametrize("parser", list(CALLS))
def test_required_calls_name_a_declared_function_with_valid_arguments(
    parser: type[ToolCallParser], compiler: GrammarCompiler, tokenizer: PreTrainedTokenizerBase
) -> None:
    good, other, unknown, invalid = CALLS[parser]
    g = grammar(compiler, parser)
    assert accepts(compiler, tokenizer, g, good)
    assert accepts(compiler, tokenizer, g, other)
    assert accepts(compiler, tokenizer, g, TWO_CALLS[parser](good, other)) is (parser is not HarmonyParser)
    assert not accepts(compiler, tokenizer, g, unknown)
    assert not accepts(compiler, tokenizer, g, invalid)
    assert not accepts(compiler, tokenizer, g, "Sure, here is the weather.")
    assert parser.parse(good)  # and the parser reads back what the grammar lets through


@pytest.mark.parametrize("parser", list(CALLS))
def test_named_choice_and_no_parallel_calls(
    parser: type[ToolCallParser], compiler: GrammarCompiler, tokenizer: PreTrainedTokenizerBase
) -> None:
    good, other, _, _ = CALLS[parser]
    named = grammar(compiler, parser, tools=(WEATHER,), parallel=False)
    assert accepts(compiler, tokenizer, named, good)
    assert not accepts(compiler, tokenizer, named, other)
    assert not accepts(compiler, tokenizer, named, TWO_CALLS[parser](good, good))


@pytest.mark.parametrize("parser", list(CALLS))
def test_auto_allows_text_or_valid_calls(
    parser: type[ToolCallParser], compiler: GrammarCompiler, tokenizer: PreTrainedTokenizerBase
) -> None:
    good, _, unknown, invalid = CALLS[parser]
    auto = grammar(compiler, parser, required=False)
    assert accepts(compiler, tokenizer, auto, "It is sunny in Paris today.")
    assert accepts(compiler, tokenizer, auto, good)
    assert not accepts(compiler, tokenizer, auto, unknown)
    assert not accepts(compiler, tokenizer, auto, invalid)


def test_hermes_auto_allows_text_before_the_call(
    compiler: GrammarCompiler, tokenizer: PreTrainedTokenizerBase
) -> None:
    good, _, unknown, _ = CALLS[HermesParser]
    auto = grammar(compiler, HermesParser, required=False)
    assert accepts(compiler, tokenizer, auto, "Let me check.\n" + good)
    assert not accepts(compiler, tokenizer, auto, "Let me check.\n" + unknown)


def test_auto_with_a_json_response_format_allows_only_that_json_or_calls(
    compiler: GrammarCompiler, tokenizer: PreTrainedTokenizerBase
) -> None:
    answer = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    g = grammar(compiler, HermesParser, required=False, text_grammar=lark_json(answer))
    assert accepts(compiler, tokenizer, g, '{"answer": "sunny"}')
    assert accepts(compiler, tokenizer, g, CALLS[HermesParser][0])
    assert not accepts(compiler, tokenizer, g, "It is sunny.")


def test_markers_that_are_special_tokens_are_matched_as_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    qwen_like = copy.deepcopy(tokenizer)
    qwen_like.add_special_tokens({"additional_special_tokens": ["<tool_call>", "</tool_call>"]})
    compiler = GrammarCompiler(qwen_like, len(qwen_like), frozenset({qwen_like.eos_token_id}))
    opener = qwen_like.convert_tokens_to_ids("<tool_call>")
    assert compiler.special_token("<tool_call>") == opener
    g = grammar(compiler, HermesParser, required=False)
    assert f"<[{opener}]>" in g
    good, _, unknown, _ = CALLS[HermesParser]
    assert accepts(compiler, qwen_like, g, "Checking. " + good)
    assert not accepts(compiler, qwen_like, g, unknown)


def test_schemas_the_engine_cannot_enforce_are_named(compiler: GrammarCompiler) -> None:
    with pytest.raises(GrammarError, match="uniqueItems"):
        compiler.check(schema_grammar({"type": "array", "uniqueItems": True}))
    with pytest.raises(GrammarError, match="look-around"):
        compiler.check(schema_grammar({"type": "string", "pattern": "^(?!x)"}))
    compiler.check(schema_grammar(json.loads('{"type": "object", "properties": {"a": {"type": "integer"}}}')))


def test_a_finished_grammar_allows_only_the_end_of_sequence(
    compiler: GrammarCompiler, tokenizer: PreTrainedTokenizerBase
) -> None:
    mask = compiler.mask(schema_grammar({"type": "object", "properties": {"a": {"type": "integer"}}}))
    ids = tokenizer('{"a": 12}', add_special_tokens=False)["input_ids"]
    allowed = mask(ids)
    assert allowed.nonzero().flatten().tolist() == [tokenizer.eos_token_id]


def test_a_rejected_token_fails_the_sequence_instead_of_opening_the_mask(
    compiler: GrammarCompiler, tokenizer: PreTrainedTokenizerBase
) -> None:
    mask = compiler.mask(schema_grammar({"type": "integer"}))
    letter = tokenizer("x", add_special_tokens=False)["input_ids"]
    assert not bool(mask([])[letter[0]])
    with pytest.raises(GrammarFailure, match="rejected"):
        mask(letter)


def test_grammar_errors_are_one_line_without_parser_state(
    compiler: GrammarCompiler, tokenizer: PreTrainedTokenizerBase
) -> None:
    verbose = 'parser error: Too many items\n<state>\nTokens: ⟦{"⟧\nParser: {\n  "rows": 1\n}\n</state>'
    assert one_line(verbose) == "parser error: Too many items"
    assert (
        one_line("regex parse error:\n    ^(?!x)\nerror: look-around")
        == "regex parse error: ^(?!x) error: look-around"
    )
    mask = compiler.mask(schema_grammar({"type": "integer"}))
    with pytest.raises(GrammarFailure) as failed:
        mask(tokenizer("x", add_special_tokens=False)["input_ids"])
    assert "\n" not in str(failed.value) and len(str(failed.value)) < 400


def test_harmony_with_its_control_tokens_lets_messages_on_any_channel_come_first(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """gpt-oss's markers are special tokens: free messages (analysis, final) may precede the one
    call, which is enforced; without tools required, an answer on the final channel ends it."""
    gpt_oss_like = copy.deepcopy(tokenizer)
    markers = ["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|call|>"]
    gpt_oss_like.add_special_tokens({"additional_special_tokens": markers})
    compiler = GrammarCompiler(gpt_oss_like, len(gpt_oss_like), frozenset({gpt_oss_like.eos_token_id}))
    auto = grammar(compiler, HarmonyParser, required=False)
    thought = "<|channel|>analysis<|message|>The user wants the weather<|end|><|start|>assistant"
    good, _, unknown, invalid = CALLS[HarmonyParser]
    assert accepts(compiler, gpt_oss_like, auto, thought + good)
    assert accepts(compiler, gpt_oss_like, auto, thought + "<|channel|>final<|message|>Sunny.")
    assert not accepts(compiler, gpt_oss_like, auto, thought + unknown)
    assert not accepts(compiler, gpt_oss_like, auto, thought + invalid)
    assert not accepts(compiler, gpt_oss_like, auto, "Sunny, without a channel.")


def test_qwen3_xml_values_are_held_to_their_schema(
    compiler: GrammarCompiler, tokenizer: PreTrainedTokenizerBase
) -> None:
    typed = ToolSpec(
        "book",
        {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 5}, "nights": {"type": "integer"}},
            "required": ["city", "nights"],
        },
    )
    g = grammar(compiler, Qwen3XmlParser, tools=(typed,))
    params = "<parameter=city>\n{}\n</parameter>\n<parameter=nights>\n{}\n</parameter>\n"
    assert accepts(compiler, tokenizer, g, XML.format("book", params.format("Paris", 3)))
    assert accepts(compiler, tokenizer, g, XML.format("book", params.format("a\nb", 3)))
    assert not accepts(compiler, tokenizer, g, XML.format("book", params.format("Barcelona", 3)))
    assert not accepts(compiler, tokenizer, g, XML.format("book", params.format("Paris", "three")))
    (_, arguments) = Qwen3XmlParser.parse(XML.format("book", params.format("12", 3)), (typed,))
    assert json.loads(arguments.fragment) == {"city": "12", "nights": 3}  # a string stays one
