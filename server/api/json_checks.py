"""What JSON parsing lets through but nothing after it can keep: lone surrogates, non-finite
numbers, and nesting beyond a sane depth.

Python's JSON parser reads `"\\ud800"` (a string that no UTF-8 text can hold), `NaN`, `Infinity`
and `1e400` (infinity), and nests as deep as the body goes. Each would fail later, in the tokenizer,
the grammar compiler, the store or the response encoder, as a 500 (or a record that cannot be read
back). The parsed body is walked once, and the first offender is a 400 naming its JSON path.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from server.protocol.errors import InvalidRequest

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")

# A step from the root: (the trail of the parent, a key or an index); paths are spelled out only
# for the offender, so a body of many small values costs one type check each.
Trail = tuple["Trail", str | int] | None


def has_surrogate(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_json(value: Any, max_depth: int) -> None:
    """Raises InvalidRequest (param: the JSON path) for a lone surrogate in a string or a key, a
    number that is not finite, or an array or object nested deeper than `max_depth`."""
    if isinstance(value, str | float):
        _check_scalar(value, None)
    if not isinstance(value, dict | list):
        return
    stack: list[tuple[dict | list, int, Trail]] = [(value, 1, None)]
    while stack:
        node, depth, trail = stack.pop()
        if depth > max_depth:
            raise _invalid(trail, f"is nested deeper than this server allows ({max_depth} levels)")
        pairs: Iterable[tuple[Any, Any]] = node.items() if isinstance(node, dict) else enumerate(node)
        for key, item in pairs:
            if isinstance(key, str) and has_surrogate(key):
                raise _invalid(trail, "has a key holding a lone UTF-16 surrogate (not valid Unicode text)")
            kind = type(item)
            if kind is str or kind is float:
                _check_scalar(item, (trail, key))
            elif kind is dict or kind is list:
                stack.append((item, depth + 1, (trail, key)))


def _check_scalar(value: str | float, trail: Trail) -> None:
    if isinstance(value, str):
        if has_surrogate(value):
            raise _invalid(trail, "holds a lone UTF-16 surrogate (not valid Unicode text)")
    elif not math.isfinite(value):
        raise _invalid(trail, "is not a finite number (JSON has no NaN or Infinity)")


def json_path(trail: Trail) -> str:
    steps: list[str | int] = []
    while trail is not None:
        trail, step = trail
        steps.append(step)
    path = ""
    for step in reversed(steps):
        if isinstance(step, int):
            path += f"[{step}]"
        elif _PLAIN_KEY.fullmatch(step):
            path += f".{step}" if path else step
        else:
            path += f"[{step!r}]"
    return path


def _invalid(trail: Trail, why: str) -> InvalidRequest:
    path = json_path(trail)
    where = path or "the request body"
    return InvalidRequest(f"Invalid value for '{where}': it {why}.", param=path or None, code="invalid_value")
