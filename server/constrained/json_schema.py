"""response_format -> grammar text: any JSON object, or a JSON schema."""

from __future__ import annotations

import json
from typing import Any

import llguidance

# Compact JSON with one space after ',' and ':'. Small models left free to place whitespace write
# runs of newlines inside objects and can loop there; a fixed layout costs nothing in validity.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

ANY_OBJECT: dict[str, Any] = {"type": "object"}


def with_layout(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with our JSON layout, for embedding in a Lark grammar as `%json {...}`."""
    return {**schema, "x-guidance": {**schema.get("x-guidance", {}), **JSON_LAYOUT}}


def schema_grammar(schema: dict[str, Any] | None) -> str:
    return llguidance.LLMatcher.grammar_from_json_schema(
        json.dumps(schema if schema is not None else ANY_OBJECT),
        overrides=JSON_LAYOUT,  # type: ignore[arg-type]
    )


def lark_json(schema: dict[str, Any]) -> str:
    """A Lark fragment matching one JSON value of `schema`."""
    return f"%json {json.dumps(with_layout(schema))}"
