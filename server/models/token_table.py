"""Every vocabulary entry's display text and UTF-8 bytes, computed once per tokenizer.

Logprob entries need a token's exact bytes (a multi-byte character may be split across tokens),
which `decode([id])` cannot give: it replaces partial characters with U+FFFD.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _byte_level_decoder() -> dict[str, int]:
    """The inverse of GPT-2's bytes_to_unicode table, used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {chr(b): b for b in printable}
    shift = 0
    for b in range(256):
        if b not in printable:
            mapping[chr(256 + shift)] = b
            shift += 1
    return mapping


def _decoder_kind(tokenizer: PreTrainedTokenizerBase) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return "decode"
    spec = json.dumps(json.loads(backend.to_str()).get("decoder"))
    if "ByteLevel" in spec:
        return "byte_level"
    if "ByteFallback" in spec or "Metaspace" in spec or "\u2581" in spec:
        return "sentencepiece"
    return "decode"


@dataclass(slots=True, frozen=True)
class TokenInfo:
    text: str  # what the token shows as; "bytes:\\xNN.." when it is not valid UTF-8 on its own
    bytes: list[int] | None  # None for special tokens, which have no text


class TokenTable:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> None:
        kind = _decoder_kind(tokenizer)
        byte_decoder = _byte_level_decoder()
        special = set(tokenizer.all_special_ids)
        pieces = tokenizer.convert_ids_to_tokens(list(range(min(vocab_size, len(tokenizer)))))
        self._infos: list[TokenInfo] = []
        for token_id, piece in enumerate(pieces):
            if token_id in special or piece is None:
                self._infos.append(TokenInfo(piece or "", None))
                continue
            raw = self._piece_bytes(tokenizer, token_id, piece, kind, byte_decoder)
            self._infos.append(TokenInfo(_display(raw), list(raw)))
        # The most characters one token can stand for (its bytes, or a special token's text): a
        # text of N characters is at least N / this many tokens, known without tokenizing it.
        self.max_token_chars = max(
            (len(info.bytes) if info.bytes is not None else len(info.text) for info in self._infos), default=1
        )

    @staticmethod
    def _piece_bytes(
        tokenizer: PreTrainedTokenizerBase, token_id: int, piece: str, kind: str, byte_decoder: dict[str, int]
    ) -> bytes:
        if kind == "byte_level" and all(ch in byte_decoder for ch in piece):
            return bytes(byte_decoder[ch] for ch in piece)
        if kind == "sentencepiece":
            match = _BYTE_TOKEN.match(piece)
            if match:
                return bytes([int(match.group(1), 16)])
            return piece.replace("\u2581", " ").encode("utf-8")
        return str(tokenizer.decode([token_id])).encode("utf-8")

    def __getitem__(self, token_id: int) -> TokenInfo:
        if 0 <= token_id < len(self._infos):
            return self._infos[token_id]
        return TokenInfo(f"<unk:{token_id}>", None)


def _display(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
