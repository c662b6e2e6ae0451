"""The app in-process over httpx's ASGI transport, serving the tiny random-weight model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import openai
import pytest
from fastapi import FastAPI

from server.app import create_app
from server.config import load_config
from tests.conftest import tiny_config_yaml


@asynccontextmanager
async def running_app(config_path: Path, **wiring: object) -> AsyncIterator[FastAPI]:
    """The app with its lifespan entered and its models loaded (`wiring`: create_app's keywords)."""
    app = create_app(load_config(config_path), **wiring)  # type: ignore[arg-type]
    async with app.router.lifespan_context(app):
        for _ in range(600):
            if app.state.registry.ready or app.state.registry.failure:
                break
            await asyncio.sleep(0.05)
        assert app.state.registry.ready, app.state.registry.failure
        yield app


@pytest.fixture(scope="session")
async def tiny_app(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FastAPI]:
    async with running_app(tiny_config_yaml(tiny_model_dir, tmp_path_factory.mktemp("cfg"))) as app:
        yield app


@asynccontextmanager
async def in_process(app: FastAPI, timeout: float = 60) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the app over httpx's ASGI transport (no socket)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver", timeout=timeout
    ) as client:
        yield client


def sdk(http: httpx.AsyncClient) -> openai.AsyncOpenAI:
    """The official SDK over an in-process client."""
    return openai.AsyncOpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http)


@pytest.fixture(scope="session")
async def http(tiny_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(tiny_app) as client:
        yield client


@pytest.fixture(scope="session")
def client(http: httpx.AsyncClient) -> openai.AsyncOpenAI:
    return sdk(http)


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Polls `condition` every 10 ms for up to `seconds`: whether it came true."""
    for _ in range(int(seconds / 0.01)):
        if condition():
            return True
        await asyncio.sleep(0.01)
    return False


def assert_error(r: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> dict:
    """An error in OpenAI's shape with this status (and this param and code, when given)."""
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error
