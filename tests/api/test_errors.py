"""Every error is OpenAI-shaped with the right status and names the parameter."""

import httpx
import pytest

from tests.api.conftest import assert_error

MSG = [{"role": "user", "content": "hi"}]


async def test_malformed_json(http: httpx.AsyncClient) -> None:
    r = await http.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(r, 400, code="invalid_json")


async def test_empty_body(http: httpx.AsyncClient) -> None:
    r = await http.post("/v1/chat/completions")
    assert_error(r, 400)


async def test_unknown_model(http: httpx.AsyncClient) -> None:
    r = await http.post("/v1/chat/completions", json={"model": "gpt-9", "messages": MSG})
    assert_error(r, 404, "model", "model_not_found")


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"n": 0}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": -1}, "max_completion_tokens"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
        ({"service_tier": "turbo"}, "service_tier"),
        ({"seed": "x"}, "seed"),
        ({"frobnicate": True}, "frobnicate"),
        ({"model": None}, "model"),
    ],
)
async def test_schema_violations_are_400_naming_the_param(
    http: httpx.AsyncClient, patch: dict, param: str
) -> None:
    body = {"model": "tiny", "messages": MSG, **patch}
    error = assert_error(await http.post("/v1/chat/completions", json=body), 400, param)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),
        ({"parallel_tool_calls": True}, "parallel_tool_calls"),
        ({"function_call": "auto"}, "function_call"),
        ({"response_format": {"type": "json_object"}}, "messages"),
        ({"reasoning_effort": "low"}, "reasoning_effort"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"format": "wav", "voice": "alloy"}}, "audio"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logit_bias": {"999999": 5}}, "logit_bias"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}],
                    }
                ]
            },
            "messages[0].content[0]",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}]},
            "messages[0].content[0].file.file_id",
        ),
    ],
)
async def test_unsupported_or_inconsistent_fields_are_refused(
    http: httpx.AsyncClient, patch: dict, param: str
) -> None:
    body = {"model": "tiny", "messages": MSG, **patch}
    assert_error(await http.post("/v1/chat/completions", json=body), 400, param)


@pytest.mark.parametrize(
    "patch",
    [
        {"tool_choice": "none"},
        {"store": False},
        {"response_format": {"type": "text"}},
        {"modalities": ["text"]},
        {"metadata": {"team": "a"}, "user": "u-1"},
    ],
)
async def test_default_valued_fields_are_accepted(http: httpx.AsyncClient, patch: dict) -> None:
    body = {"model": "tiny", "messages": MSG, "max_tokens": 1, **patch}
    assert (await http.post("/v1/chat/completions", json=body)).status_code == 200


async def test_context_length_exceeded_names_the_numbers(http: httpx.AsyncClient) -> None:
    body = {"model": "tiny", "messages": MSG, "max_completion_tokens": 1000}
    error = assert_error(
        await http.post("/v1/chat/completions", json=body), 400, code="context_length_exceeded"
    )
    assert "512" in error["message"] and "1000" in error["message"]


async def test_prompt_alone_too_long(http: httpx.AsyncClient) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "word " * 600}]}
    assert_error(await http.post("/v1/chat/completions", json=body), 400, code="context_length_exceeded")


async def test_unknown_route_and_method(http: httpx.AsyncClient) -> None:
    assert_error(await http.get("/v1/nothing"), 404)
    assert_error(await http.get("/v1/chat/completions/x/y/z"), 404)
    assert_error(await http.put("/v1/chat/completions", json={}), 405)


async def test_server_keeps_serving_after_errors(http: httpx.AsyncClient) -> None:
    for _ in range(3):
        await http.post("/v1/chat/completions", content=b"[]", headers={"content-type": "application/json"})
    r = await http.post("/v1/chat/completions", json={"model": "tiny", "messages": MSG, "max_tokens": 2})
    assert r.status_code == 200


async def test_an_unexpected_error_is_a_500_that_leaves_the_app_serving(
    http: httpx.AsyncClient, tiny_app, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug (an exception no handler knows) is rendered by the app itself: nothing escapes to the
    server, which would otherwise drop the keep-alive connection under the client."""

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(tiny_app.state.chat_service, "start", broken)
    strict = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=tiny_app, raise_app_exceptions=True), base_url="http://t"
    )
    async with strict:
        r = await strict.post("/v1/chat/completions", json={"model": "tiny", "messages": MSG})
        error = assert_error(r, 500)
        assert error["type"] == "server_error" and "a bug" not in error["message"]
        assert (await strict.get("/v1/models")).status_code == 200
