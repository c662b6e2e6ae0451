"""Input that JSON allows but nothing downstream can keep is a 400 naming where it sits, never a 500,
and nothing of it is stored."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.api.conftest import assert_error

MSG = [{"role": "user", "content": "hi"}]
SURROGATE = "\ud800"
TOOL = {"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def _post_raw(http: httpx.AsyncClient, text: str) -> Any:
    return http.post(
        "/v1/chat/completions", content=text.encode(), headers={"content-type": "application/json"}
    )


def _assert_400(r: httpx.Response, param: str | None) -> dict:
    """An invalid_request_error 400 naming `param` (None: whatever it names)."""
    error = assert_error(r, 400, param)
    assert error["type"] == "invalid_request_error", error
    return error


def _schema_format(schema: Any) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}


def _with_surrogate(where: str) -> tuple[dict, str]:
    """A request body with a lone surrogate at `where`, and the JSON path the 400 must name."""
    s = f"a{SURROGATE}b"
    bodies: dict[str, tuple[dict, str]] = {
        "content": ({"messages": [{"role": "user", "content": s}]}, "messages[0].content"),
        "content part": (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": s}]}]},
            "messages[0].content[0].text",
        ),
        "name": ({"messages": [{"role": "user", "content": "x", "name": s}]}, "messages[0].name"),
        "tool name": (
            {"tools": [{"type": "function", "function": {"name": s}}]},
            "tools[0].function.name",
        ),
        "tool description": (
            {"tools": [{"type": "function", "function": {"name": "f", "description": s}}]},
            "tools[0].function.description",
        ),
        "tool call id": (
            {
                "messages": [
                    *MSG,
                    {"role": "assistant", "tool_calls": [{**CALL, "id": s}]},
                    {"role": "tool", "content": "1", "tool_call_id": "call_1"},
                ]
            },
            "messages[1].tool_calls[0].id",
        ),
        "metadata value": ({"metadata": {"k": s}, "store": True}, "metadata.k"),
        "metadata key": ({"metadata": {s: "v"}, "store": True}, "metadata"),
        "user": ({"user": s, "store": True}, "user"),
        "model": ({"model": s}, "model"),
        "schema description": (
            {"response_format": _schema_format({"type": "object", "description": s})},
            "response_format.json_schema.schema.description",
        ),
        "annotations": (
            {
                "messages": [
                    *MSG,
                    {"role": "assistant", "content": "x", "annotations": [{"type": "url_citation", "t": s}]},
                    *MSG,
                ],
                "store": True,
            },
            "messages[1].annotations[0].t",
        ),
    }
    patch, param = bodies[where]
    return {"model": "tiny", "messages": MSG, "max_tokens": 2, **patch}, param


WHERE = [
    "content",
    "content part",
    "name",
    "tool name",
    "tool description",
    "tool call id",
    "metadata value",
    "metadata key",
    "user",
    "model",
    "schema description",
    "annotations",
]


@pytest.mark.parametrize("where", WHERE)
async def test_a_lone_surrogate_anywhere_is_a_400_naming_its_path(
    http: httpx.AsyncClient, where: str
) -> None:
    body, param = _with_surrogate(where)
    text = json.dumps(body)  # writes the surrogate as the escape "\ud800", as a client would
    assert "\\ud800" in text
    error = _assert_400(await _post_raw(http, text), param)
    assert "surrogate" in error["message"] or "unicode" in error["message"]
    # Raw bytes of a UTF-8-encoded surrogate (which Python's JSON parser also reads) are refused too.
    raw = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    r = await http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    _assert_400(r, param)


async def test_nothing_with_a_surrogate_is_stored_and_the_project_stays_listable(
    http: httpx.AsyncClient,
) -> None:
    for where in ("metadata value", "metadata key", "user", "annotations"):
        body, _ = _with_surrogate(where)
        assert (await _post_raw(http, json.dumps(body))).status_code == 400
    r = await http.get("/v1/chat/completions?limit=100")
    assert r.status_code == 200
    assert all(item.get("input_user") != f"a{SURROGATE}b" for item in r.json()["data"])


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
async def test_numbers_json_cannot_hold_are_400(http: httpx.AsyncClient, number: str) -> None:
    schema = f'{{"type": "number", "maximum": {number}}}'
    text = (
        '{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], '
        f'"response_format": {{"type": "json_schema", "json_schema": {{"name": "s", "schema": {schema}}}}}}}'
    )
    error = _assert_400(await _post_raw(http, text), "response_format.json_schema.schema.maximum")
    assert "finite" in error["message"]


def _nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


async def test_deeply_nested_json_is_refused_at_parse_and_not_stored(http: httpx.AsyncClient) -> None:
    annotation = {"type": "url_citation", **_nested(900)}
    messages = [*MSG, {"role": "assistant", "content": "x", "annotations": [annotation]}, *MSG]
    body = {"model": "tiny", "messages": messages, "store": True, "metadata": {"deep": "yes"}}
    error = _assert_400(await http.post("/v1/chat/completions", json=body), None)
    assert error["param"].startswith("messages[1].annotations[0].a.a") and "nested deeper" in error["message"]
    r = await http.get("/v1/chat/completions", params={"metadata[deep]": "yes"})
    assert r.status_code == 200 and r.json()["data"] == []


async def test_a_deep_schema_is_refused_but_a_reasonable_one_is_served(http: httpx.AsyncClient) -> None:
    def schema(levels: int) -> dict:
        value: dict = {"type": "string"}
        for _ in range(levels):
            value = {"type": "object", "properties": {"a": value}, "required": ["a"]}
        return value

    deep = {"model": "tiny", "messages": MSG, "response_format": _schema_format(schema(150))}
    error = _assert_400(await http.post("/v1/chat/completions", json=deep), None)
    assert error["param"].startswith("response_format.json_schema.schema.properties.a")
    ok = {"model": "tiny", "messages": MSG, "max_tokens": 4, "response_format": _schema_format(schema(10))}
    assert (await http.post("/v1/chat/completions", json=ok)).status_code == 200


@pytest.mark.parametrize("key", ["²", "--5", "١", "5.0", " 5", "+5", "0x10", "9" * 5000])
async def test_logit_bias_keys_are_ascii_integers(http: httpx.AsyncClient, key: str) -> None:
    body = {"model": "tiny", "messages": MSG, "max_tokens": 1, "logit_bias": {key: 1}}
    error = _assert_400(await http.post("/v1/chat/completions", json=body), "logit_bias")
    assert key[:20] in error["message"]


@pytest.mark.parametrize("key", ["-1", "99999999", "12345678901234567890"])
async def test_logit_bias_token_ids_outside_the_vocabulary_are_400(http: httpx.AsyncClient, key: str) -> None:
    body = {"model": "tiny", "messages": MSG, "max_tokens": 1, "logit_bias": {key: 1}}
    error = _assert_400(await http.post("/v1/chat/completions", json=body), "logit_bias")
    assert "vocabulary" in error["message"]


async def test_errors_never_echo_raw_control_characters(http: httpx.AsyncClient) -> None:
    r = await http.get("/v1/chat/completions/chatcmpl-a%00b")
    assert r.status_code == 404 and "\x00" not in r.json()["error"]["message"]
    assert "\\x00" in r.json()["error"]["message"]
    r = await http.post("/v1/chat/completions", json={"model": "x\x00y", "messages": MSG})
    assert r.status_code == 404 and "\x00" not in r.json()["error"]["message"]


def _ref_cycle() -> dict:
    node = {"type": "object", "properties": {"x": {"$ref": "#/$defs/a"}}, "required": ["x"]}
    return {"$ref": "#/$defs/a", "$defs": {"a": node}}


GRAMMARS_THAT_FAIL_WHEN_USED = {
    "ref cycle without a base case": _ref_cycle(),
    "a million repeats": {"type": "string", "pattern": "^a{1000000}$"},
    "1000 optional properties": {
        "type": "object",
        "properties": {f"p{i}": {"type": "string"} for i in range(1000)},
    },
    "integer bounds past 64 bits": {"type": "integer", "minimum": 10**23},
    "a length past 64 bits": {"type": "string", "minLength": 10**23},
    "a grammar over the size limit": {"enum": [f"value-{i:05d}" for i in range(20000)]},
}


@pytest.mark.parametrize("name", GRAMMARS_THAT_FAIL_WHEN_USED)
async def test_grammars_that_would_fail_mid_generation_are_400_before_it_starts(
    http: httpx.AsyncClient, name: str
) -> None:
    schema = GRAMMARS_THAT_FAIL_WHEN_USED[name]
    for stream in (False, True):
        body = {"model": "tiny", "messages": MSG, "max_tokens": 8, "stream": stream}
        body["response_format"] = _schema_format(schema)
        error = _assert_400(await http.post("/v1/chat/completions", json=body), "response_format")
        assert "cannot be enforced" in error["message"] and "\n" not in error["message"]
        assert "<state>" not in error["message"] and len(error["message"]) < 500
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    body = {"model": "tiny", "messages": MSG, "max_tokens": 8, "tools": [tool], "tool_choice": "required"}
    _assert_400(await http.post("/v1/chat/completions", json=body), "tools[0].function.parameters")
