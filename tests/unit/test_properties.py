"""Property-based tests (hypothesis): the incremental decoder, stop-string hold-back, the tool-call
parsers and request validation, on inputs nobody thought to write down."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from transformers import PreTrainedTokenizerBase

from server.chat.assembler import ChoiceAssembler
from server.chat.detokenizer import IncrementalDecoder
from server.engine.types import SampledToken
from server.models.token_table import TokenTable
from server.parsers.base import ToolCallParser, merge
from server.parsers.deepseek import DeepSeekParser
from server.parsers.events import ParseEvent, ToolCallArguments, ToolCallStart, ToolSpec
from server.parsers.gemma import GemmaParser
from server.parsers.harmony import HarmonyParser
from server.parsers.hermes import HermesParser
from server.parsers.llama3_json import Llama3JsonParser
from server.parsers.mistral import MistralParser
from server.parsers.mistral_args import MistralArgsParser
from server.parsers.pythonic import PythonicParser
from server.parsers.qwen3_xml import Qwen3XmlParser
from server.protocol.request import ChatCompletionRequest

FIXTURE_OK = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Text that exercises tokenizers: ASCII words and punctuation, spaces and newlines, accents, CJK,
# emoji with modifiers (multi-token characters), and characters stop strings are made of.
TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("ab \n.,!?<>{}[]\"'")),
        st.sampled_from(["é", "ü", "東", "京", "🙂", "👍", "\U0001f3fd", "\u200d", "\t"]),
        st.characters(codec="utf-8", exclude_categories=("Cs",)),
    ),
    max_size=60,
)


# --- the incremental decoder ------------------------------------------------------------------


@FIXTURE_OK
@given(text=TEXT)
def test_incremental_decoding_of_encoded_text_equals_decoding_it_whole(
    tokenizer: PreTrainedTokenizerBase, text: str
) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    decoder = IncrementalDecoder(tokenizer)
    pieces = "".join(decoder.push(token_id) for token_id in ids)
    whole = tokenizer.decode(ids, skip_special_tokens=True)
    assert pieces + decoder.flush() == whole
    # Never half a character mid-stream (U+FFFD only where the tokenizer itself cannot represent one).
    assert "\ufffd" not in pieces or "\ufffd" in whole


@FIXTURE_OK
@given(data=st.data())
def test_incremental_decoding_of_any_token_ids_equals_decoding_them_whole(
    tokenizer: PreTrainedTokenizerBase, data: st.DataObject
) -> None:
    """Arbitrary ids, as a random-weight model samples them: partial characters, byte tokens."""
    ids = data.draw(st.lists(st.integers(0, len(tokenizer) - 1), max_size=40))
    decoder = IncrementalDecoder(tokenizer)
    joined = "".join(decoder.push(token_id) for token_id in ids) + decoder.flush()
    assert joined == tokenizer.decode(ids, skip_special_tokens=True)


# --- stop strings -----------------------------------------------------------------------------

_TABLES: dict[int, TokenTable] = {}


def _table(tokenizer: PreTrainedTokenizerBase) -> TokenTable:
    """Built once per tokenizer (it reads the whole vocabulary)."""
    if id(tokenizer) not in _TABLES:
        _TABLES[id(tokenizer)] = TokenTable(tokenizer, len(tokenizer))
    return _TABLES[id(tokenizer)]


STOP_TEXT = st.text(alphabet=st.sampled_from(list("ab \n.🙂é")), max_size=40)
STOPS = st.lists(st.text(alphabet=st.sampled_from(list("ab \n.🙂é")), min_size=1, max_size=5), max_size=4)


@FIXTURE_OK
@given(text=STOP_TEXT, stops=STOPS)
def test_stop_strings_are_held_back_and_cut_at_the_first_one_completed(
    tokenizer: PreTrainedTokenizerBase, text: str, stops: list[str]
) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    full = tokenizer.decode(ids, skip_special_tokens=True)
    assembler = ChoiceAssembler(IncrementalDecoder(tokenizer), _table(tokenizer), stops, False)
    out, stopped = "", False
    for token_id in ids:
        delta = assembler.feed(SampledToken(token_id))
        out += delta.text
        for stop in stops:  # nothing sent so far holds a stop string, or its start followed by more text
            assert stop not in out
        if delta.stopped:
            stopped = True
            break
    if not stopped:
        out += assembler.finish().text
    # The reference: after each token, the text decoded so far (a partial character held back);
    # the first time it holds a stop string, the answer is cut where the earliest one starts.
    expected, expect_stop = full, False
    for k in range(1, len(ids) + 1):
        so_far = tokenizer.decode(ids[:k], skip_special_tokens=True).rstrip("\ufffd")
        starts = [so_far.find(stop) for stop in stops if stop in so_far]
        if starts:
            expected, expect_stop = so_far[: min(starts)], True
            break
    assert (out, stopped) == (expected, expect_stop), (full, stops)
    assert not any(stop in out for stop in stops)


# --- tool-call parsers ------------------------------------------------------------------------

ARGS = st.dictionaries(
    st.text(max_size=6), st.one_of(st.integers(), st.text(max_size=8), st.booleans()), max_size=3
)
NAME = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_-]{0,8}", fullmatch=True)  # as OpenAI allows


def _call_text(parser: type[ToolCallParser], name: str, args: dict) -> str:
    if parser is HermesParser:
        return f"<tool_call>\n{json.dumps({'name': name, 'arguments': args})}\n</tool_call>"
    if parser is Llama3JsonParser:
        return json.dumps({"name": name, "parameters": args})
    if parser is MistralParser:
        return "[TOOL_CALLS]" + json.dumps([{"name": name, "arguments": args}])
    if parser is not PythonicParser:
        return parser.write_calls([(name, args)]).removeprefix("<|start|>assistant")
    return f"[{name}({', '.join(f'{k}={json.dumps(v)}' for k, v in args.items() if k.isidentifier())})]"


def _fed(
    parser: type[ToolCallParser], pieces: list[str], tools: tuple[ToolSpec, ...] = ()
) -> list[ParseEvent]:
    p = parser(tools)
    events: list[ParseEvent] = []
    for piece in pieces:
        events += p.feed(piece)
    return merge(events + p.finish())


def _schema_of(value: object) -> dict[str, str]:
    kind = {bool: "boolean", int: "integer", str: "string"}[type(value)]
    return {"type": kind}


def _split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


PARSERS = [
    HermesParser,
    Llama3JsonParser,
    MistralParser,
    PythonicParser,
    DeepSeekParser,
    MistralArgsParser,
    HarmonyParser,
    Qwen3XmlParser,
    GemmaParser,
]


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
@settings(max_examples=200, deadline=None)
@given(
    prefix=TEXT,
    name=NAME,
    args=ARGS,
    suffix=st.text(max_size=10),
    cuts=st.lists(st.integers(0, 400), max_size=12),
    with_call=st.booleans(),
)
def test_parsers_give_the_same_events_however_the_text_is_split(
    parser: type[ToolCallParser],
    prefix: str,
    name: str,
    args: dict,
    suffix: str,
    cuts: list[int],
    with_call: bool,
) -> None:
    output = prefix + (_call_text(parser, name, args) if with_call else "") + suffix
    whole = _fed(parser, [output])
    assert _fed(parser, _split(output, cuts)) == whole
    assert _fed(parser, list(output)) == whole
    # Nothing is lost: every character is content or part of a call.
    starts = [e for e in whole if isinstance(e, ToolCallStart)]
    text = "".join(e for e in whole if isinstance(e, str))
    if not starts:
        assert text == output
    for event in whole:
        if isinstance(event, ToolCallArguments):
            assert isinstance(event.fragment, str)


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
@settings(max_examples=60, deadline=None)
@given(name=NAME, args=ARGS, prefix=st.sampled_from(["", "Sure. ", "ok\n"]))
def test_a_well_formed_call_is_read_back(
    parser: type[ToolCallParser], name: str, args: dict, prefix: str
) -> None:
    if parser is PythonicParser:
        args = {k: v for k, v in args.items() if k.isidentifier()}  # keywords too: `from=` must work
        if prefix:
            prefix = ""  # pythonic calls are the whole output
    if parser is GemmaParser:
        args = {k: v for k, v in args.items() if k.isidentifier()}  # keyword arguments in Python
    if parser is Qwen3XmlParser:
        args = {k: v for k, v in args.items() if k and ">" not in k and "\n" not in k}  # tag names
    if parser in (Llama3JsonParser, HarmonyParser):
        assume(not prefix)  # a JSON call after text is text; harmony output opens with a channel
    tools = (ToolSpec(name, {"type": "object", "properties": {k: _schema_of(v) for k, v in args.items()}}),)
    events = _fed(parser, [prefix + _call_text(parser, name, args)], tools)
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    assert [s.name for s in starts] == [name]
    fragments = "".join(e.fragment for e in events if isinstance(e, ToolCallArguments))
    assert json.loads(fragments) == args


# --- request validation -----------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
# Every top-level field of the request body (from the schema itself, so a new field is covered).
FIELDS = st.sampled_from(sorted(ChatCompletionRequest.model_fields))
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", "developer", "function", "robot"])},
    optional={"content": JSON | st.text(max_size=10), "name": JSON, "tool_calls": JSON, "tool_call_id": JSON},
)


@settings(max_examples=400, deadline=None)
@given(
    base=st.fixed_dictionaries({"model": st.just("m"), "messages": st.lists(MESSAGE, max_size=3)}),
    extra=st.dictionaries(FIELDS, JSON, max_size=4),
)
def test_request_validation_accepts_or_refuses_cleanly(base: dict, extra: dict) -> None:
    """Any JSON body either validates or fails with pydantic's ValidationError (-> a 400 naming the
    field), never another exception (-> a 500)."""
    try:
        request = ChatCompletionRequest.model_validate({**base, **extra})
    except ValidationError:
        return
    request.model_dump_json()  # what is accepted can be serialized again (stored completions do)
    _ = request.stop_sequences
