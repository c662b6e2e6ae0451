"""Incremental, UTF-8 safe detokenization of one generated sequence."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    """Decodes a growing list of token ids into text, one stable piece at a time.

    Only a small window of recent tokens is decoded per step (as vLLM does): the window keeps one
    already-emitted token in front, so tokenizers that drop a leading space at the start of a
    decode keep it, and a character whose bytes span several tokens is held back until complete.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, keep: frozenset[int] = frozenset()) -> None:
        """`keep`: special tokens written out as their text (a tool-call parser reads them, e.g.
        Mistral's `[TOOL_CALLS]`); every other special token is left out, as always."""
        self._tokenizer = tokenizer
        self._keep = keep
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    @property
    def incomplete(self) -> bool:
        """Tokens were pushed whose text is not out yet (a partial multi-byte character)."""
        return self._read_offset < len(self._ids)

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if len(full) > len(prefix) and not full.endswith(REPLACEMENT):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return full[len(prefix) :]
        return ""

    def flush(self) -> str:
        """What is left at the end; an incomplete character comes out as U+FFFD."""
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._ids)
        return full[len(prefix) :]

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        if not self._keep or self._keep.isdisjoint(ids):
            return str(self._tokenizer.decode(ids, skip_special_tokens=True))
        pieces: list[str] = []
        run: list[int] = []
        for token_id in [*ids, None]:
            if token_id is None or token_id in self._keep:
                if run:
                    pieces.append(str(self._tokenizer.decode(run, skip_special_tokens=True)))
                    run = []
                if token_id is not None:
                    pieces.append(str(self._tokenizer.convert_ids_to_tokens(token_id)))
            else:
                run.append(token_id)
        return "".join(pieces)
