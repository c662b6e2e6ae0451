"""Stream obfuscation: every streamed chunk carries an `obfuscation` field of random characters, as
OpenAI's do by default, so that the size of an event says nothing about the length of the text it
carries (a token-length side channel on encrypted streams, as in the "Whisper Leak" attack).

Each event is padded up to the next multiple of `BLOCK` bytes, then by a random 0..BLOCK-1 more:
the size no longer tells a 1-character token from a 30-character one, nor which block it fell in.
`stream_options.include_obfuscation: false` turns it off (a few dozen bytes per event saved).
"""

from __future__ import annotations

import secrets

from pydantic import BaseModel

BLOCK = 32
_FIELD = b',"obfuscation":"'


class Obfuscator:
    """One per stream. The lengths come from the OS's random source (an observer sees only them);
    the characters are a random string drawn once per stream, each event taking a slice of it at
    a random offset (they travel encrypted: drawing new ones per event would only cost time)."""

    def __init__(self) -> None:
        self._pool = secrets.token_hex(3 * BLOCK // 2).encode()  # 3 * BLOCK hex digits

    def event(self, model: BaseModel) -> bytes:
        body = model.model_dump_json(exclude_unset=True).encode()
        framed = len(b"data: ") + len(body) + len(_FIELD) + len(b'"\n\n')
        length = -framed % BLOCK + secrets.randbelow(BLOCK)
        start = secrets.randbelow(BLOCK)
        return b"data: " + body[:-1] + _FIELD + self._pool[start : start + length] + b'"}\n\n'
