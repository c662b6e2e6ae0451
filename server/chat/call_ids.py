"""Tool call ids in the form the model's chat template accepts.

Most templates take any id, and ours are `call_<24 hex>` as OpenAI's. Mistral's v0.3 templates
raise unless every id is 9 alphanumeric characters: for such a model the ids we generate have
that form, and an id a client sends in the history that does not (one from another server, say)
is mapped to one that does, the same way in the call and in its result, so they still pair up.
"""

from __future__ import annotations

import hashlib
import secrets
import string
import uuid
from dataclasses import dataclass

_ALPHANUMERIC = string.ascii_letters + string.digits


@dataclass(slots=True, frozen=True)
class CallIdFormat:
    length: int | None = None  # None: any id; else exactly this many alphanumeric characters

    def new(self) -> str:
        if self.length is None:
            return f"call_{uuid.uuid4().hex[:24]}"
        return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(self.length))

    def fit(self, client_id: str) -> str:
        """A client's id in this format: itself when it already is, else a digest of it."""
        if self.length is None or (
            len(client_id) == self.length and client_id.isalnum() and client_id.isascii()
        ):
            return client_id
        number = int.from_bytes(hashlib.sha256(client_id.encode("utf-8", "surrogatepass")).digest(), "big")
        chars = []
        for _ in range(self.length):
            number, digit = divmod(number, len(_ALPHANUMERIC))
            chars.append(_ALPHANUMERIC[digit])
        return "".join(chars)


ANY = CallIdFormat()
# What a probe render tries, in order: the first format the template renders is the model's.
CANDIDATES = (ANY, CallIdFormat(9))
