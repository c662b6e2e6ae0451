"""Incremental detokenization, stop-string hold-back and logprob alignment, on the real tokenizer."""

import pytest
from transformers import PreTrainedTokenizerBase

from server.chat.assembler import ChoiceAssembler
from server.chat.detokenizer import IncrementalDecoder
from server.engine.types import SampledToken
from server.models.token_table import TokenTable

TEXTS = [
    "Hello, world! The capital of France is Paris.",
    "Les élèves étudient à l'école. 東京は日本の首都です。🙂👍🏽 done",
    "  leading spaces\n\nand\ttabs ",
]


def _assembler(tokenizer: PreTrainedTokenizerBase, stop: list[str], logprobs: bool = True) -> ChoiceAssembler:
    return ChoiceAssembler(
        IncrementalDecoder(tokenizer), TokenTable(tokenizer, len(tokenizer)), stop, logprobs
    )


def _run(tokenizer: PreTrainedTokenizerBase, text: str, stop: list[str]) -> tuple[list[str], list[int], bool]:
    assembler = _assembler(tokenizer, stop)
    deltas: list[str] = []
    entries: list[int] = []
    stopped = False
    for token_id in tokenizer.encode(text, add_special_tokens=False):
        delta = assembler.feed(SampledToken(token_id, -0.5))
        deltas.append(delta.text)
        entries += [1] * len(delta.logprobs)
        if delta.stopped:
            stopped = True
            break
    if not stopped:
        tail = assembler.finish()
        deltas.append(tail.text)
        entries += [1] * len(tail.logprobs)
    return deltas, entries, stopped


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_concatenate_to_the_text_without_replacement_chars(
    tokenizer: PreTrainedTokenizerBase, text: str
) -> None:
    deltas, entries, _ = _run(tokenizer, text, [])
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
    assert len(entries) == len(tokenizer.encode(text, add_special_tokens=False))


def test_split_multibyte_character_is_held_until_complete(tokenizer: PreTrainedTokenizerBase) -> None:
    ids = tokenizer.encode("🙂", add_special_tokens=False)
    assert len(ids) > 1  # the emoji's bytes span several tokens in this vocabulary
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(i) for i in ids]
    assert pieces[:-1] == [""] * (len(ids) - 1) and pieces[-1] == "🙂"


@pytest.mark.parametrize(
    ("text", "stop", "expected"),
    [
        ("The capital of France is Paris. It is big.", ["Paris"], "The capital of France is "),
        ("The capital of France is Paris. It is big.", [" is Par"], "The capital of France"),
        ("abc STOP def", ["STOP", "abc"], ""),
        ("one two three", ["four"], "one two three"),
        ("waiting for the end", ["end of"], "waiting for the end"),  # a held prefix is released at the end
        ("東京は日本の首都です", ["日本"], "東京は"),
    ],
)
def test_stop_strings_never_leak(
    tokenizer: PreTrainedTokenizerBase, text: str, stop: list[str], expected: str
) -> None:
    deltas, _, stopped = _run(tokenizer, text, stop)
    assert "".join(deltas) == expected
    assert stopped == any(s in text for s in stop)
    for s in stop:
        assert all(s not in d for d in deltas)


def test_stop_string_fed_one_character_per_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """A stop string spanning many tokens is never partly emitted."""
    text = "say <END> now"
    ids = [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(ch)[0]) for ch in text]
    assembler = _assembler(tokenizer, ["<END>"])
    out = ""
    for token_id in ids:
        delta = assembler.feed(SampledToken(token_id, -0.1))
        out += delta.text
        assert "<" not in out
        if delta.stopped:
            break
    assert out == "say "


def test_logprob_entries_cover_tokens_before_the_stop(tokenizer: PreTrainedTokenizerBase) -> None:
    text = "Hello world and more"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assembler = _assembler(tokenizer, [" and"])
    entries = []
    for token_id in ids:
        delta = assembler.feed(SampledToken(token_id, -0.1))
        entries += delta.logprobs
        if delta.stopped:
            break
    assert "".join(e.token for e in entries) == "Hello world"
    assert all(e.bytes == list(e.token.encode()) for e in entries)


def test_token_table_gives_exact_bytes_of_partial_characters(tokenizer: PreTrainedTokenizerBase) -> None:
    table = TokenTable(tokenizer, len(tokenizer))
    ids = tokenizer.encode("🙂", add_special_tokens=False)
    raw = b"".join(bytes(table[i].bytes or []) for i in ids)
    assert raw.decode("utf-8") == "🙂"
    assert any(table[i].text.startswith("bytes:") for i in ids)
    assert table[tokenizer.eos_token_id].bytes is None
