"""Configured request limits: each violation is a 400 naming the field; a big body is refused unread."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import running_app
from tests.conftest import tiny_config_yaml

LIMITS = (
    "  limits: {max_body_bytes: 2048, max_messages: 2, max_n: 2, max_tokens: 5, max_tools: 1, max_stop: 1}\n"
)
MSG = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


@pytest.fixture(scope="module")
async def http(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[httpx.AsyncClient]:
    config = tiny_config_yaml(tiny_model_dir, tmp_path_factory.mktemp("limits"))
    config.write_text(config.read_text(encoding="utf-8") + LIMITS, encoding="utf-8")
    async with running_app(config) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as client:
            yield client


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"messages": MSG * 3}, "messages"),
        ({"n": 3}, "n"),
        ({"max_tokens": 6}, "max_tokens"),
        ({"max_completion_tokens": 6}, "max_completion_tokens"),
        ({"tools": [TOOL, {**TOOL, "function": {**TOOL["function"], "name": "g"}}]}, "tools"),
        ({"stop": ["a", "b"]}, "stop"),
    ],
)
async def test_each_limit_is_a_400_naming_its_field(http: httpx.AsyncClient, patch: dict, param: str) -> None:
    r = await http.post("/v1/chat/completions", json={"model": "tiny", "messages": MSG, **patch})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


async def test_within_the_limits_is_served(http: httpx.AsyncClient) -> None:
    body = {"model": "tiny", "messages": MSG * 2, "n": 2, "max_tokens": 5, "tools": [TOOL], "stop": "x"}
    assert (await http.post("/v1/chat/completions", json=body)).status_code == 200


async def test_a_body_over_the_limit_is_refused(http: httpx.AsyncClient) -> None:
    big = {"model": "tiny", "messages": [{"role": "user", "content": "x" * 4000}]}
    r = await http.post("/v1/chat/completions", json=big)
    assert r.status_code == 400 and r.json()["error"]["code"] == "request_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"model": "tiny", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}]}'

    r = await http.post(
        "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "request_too_large"
    assert (
        await http.post("/v1/chat/completions", json={"model": "tiny", "messages": MSG, "max_tokens": 1})
    ).status_code == 200
