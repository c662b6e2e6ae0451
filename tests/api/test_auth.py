"""API keys: 401s in OpenAI's shape, an open /health, and stored completions scoped to the key's project."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest

from server.app import create_app
from server.config import ConfigError, load_config
from tests.api.conftest import running_app
from tests.conftest import tiny_config_yaml

KEY_A, KEY_B = "sk-team-a-0123456789", "sk-team-b-0123456789"
ASK = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
async def keyed_app(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[object]:
    folder = tmp_path_factory.mktemp("auth")
    (folder / "keys.yaml").write_text(f"keys:\n  - key: {KEY_A}\n    project: team-a\n", encoding="utf-8")
    extra_server = "  api_keys_file: keys.yaml\n  api_keys_env: OW_TEST_KEYS\n"
    config = tiny_config_yaml(tiny_model_dir, folder)
    config.write_text(config.read_text(encoding="utf-8") + extra_server, encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OW_TEST_KEYS", f"{KEY_B}=team-b")
        async with running_app(config) as app:
            yield app


def _client(app: object, key: str, http: httpx.AsyncClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url="http://t/v1", api_key=key, http_client=http, max_retries=0)


@pytest.fixture
async def http(keyed_app: object) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=keyed_app), base_url="http://t") as client:
        yield client


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer sk-wrong-0123456789"}, {"Authorization": KEY_A}]
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
        ("GET", "/v1/chat/completions"),
        ("DELETE", "/v1/chat/completions/x"),
    ],
)
async def test_v1_routes_need_a_valid_key(
    http: httpx.AsyncClient, headers: dict, method: str, path: str
) -> None:
    body = {"model": "tiny", "messages": ASK, "max_tokens": 1} if method == "POST" else None
    r = await http.request(method, path, headers=headers, json=body)
    assert r.status_code == 401
    error = r.json()["error"]
    assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
    assert "0123456789" not in error["message"]  # a wrong key is never echoed whole


async def test_health_stays_open_and_keys_from_both_sources_work(
    http: httpx.AsyncClient, keyed_app: object
) -> None:
    assert (await http.get("/health")).status_code == 200
    for key in (KEY_A, KEY_B):
        models = await _client(keyed_app, key, http).models.list()
        assert [m.id for m in models.data] == ["tiny"]


async def test_a_project_never_sees_another_projects_completions(
    http: httpx.AsyncClient, keyed_app: object
) -> None:
    team_a, team_b = _client(keyed_app, KEY_A, http), _client(keyed_app, KEY_B, http)
    created = await team_a.chat.completions.create(model="tiny", messages=ASK, max_tokens=2, store=True)
    for call in (
        team_b.chat.completions.retrieve(created.id),
        team_b.chat.completions.update(created.id, metadata={"x": "y"}),
        team_b.chat.completions.delete(created.id),
        team_b.chat.completions.messages.list(created.id),
    ):
        with pytest.raises(openai.NotFoundError):  # exactly like a completion that does not exist
            await call
    assert created.id not in [c.id async for c in team_b.chat.completions.list()]
    assert created.id in [c.id async for c in team_a.chat.completions.list()]
    assert (await team_a.chat.completions.delete(created.id)).deleted


def test_a_keys_variable_that_is_not_set_stops_startup(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = tiny_config_yaml(tiny_model_dir, tmp_path)
    config.write_text(
        config.read_text(encoding="utf-8") + "  api_keys_env: OW_TEST_UNSET_KEYS\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError, match="OW_TEST_UNSET_KEYS"):
        create_app(load_config(config))


def _asgi(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_cors_only_for_allowlisted_origins(tiny_model_dir: Path, tmp_path: Path) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}

    def asking(origin: str) -> dict[str, str]:
        return {"Origin": origin, **preflight}

    config = tiny_config_yaml(tiny_model_dir, tmp_path)
    open_text = config.read_text(encoding="utf-8")
    async with running_app(config) as app, _asgi(app) as http:  # the default: no origin is allowed
        r = await http.options("/v1/chat/completions", headers=asking("https://a.example"))
        assert "access-control-allow-origin" not in r.headers
    config.write_text(open_text + '  cors_origins: ["https://a.example"]\n', encoding="utf-8")
    async with running_app(config) as app, _asgi(app) as http:
        allowed = await http.options("/v1/chat/completions", headers=asking("https://a.example"))
        other = await http.options("/v1/chat/completions", headers=asking("https://b.example"))
    assert allowed.headers["access-control-allow-origin"] == "https://a.example"
    assert "access-control-allow-origin" not in other.headers


async def test_a_wrong_non_ascii_key_is_named_as_sent(http: httpx.AsyncClient) -> None:
    r = await http.get("/v1/models", headers={"Authorization": "Bearer sk-wrong-clé-é".encode()})
    assert r.status_code == 401
    message = r.json()["error"]["message"]
    assert "-é" in message and "Ã" not in message  # UTF-8, not read as Latin-1


async def test_the_key_is_checked_before_the_body_is_read(keyed_app: object) -> None:
    """A request without a key gets its 401 while its body is still on the way (never read)."""
    sent: list[dict] = []
    read = 0

    async def receive() -> dict:
        nonlocal read
        read += 1
        raise AssertionError("the body was read before the key was checked")

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"100000")],
        "client": ("127.0.0.1", 1),
        "server": ("t", 80),
        "scheme": "http",
        "http_version": "1.1",
        "root_path": "",
        "asgi": {"version": "3.0"},
    }
    await keyed_app(scope, receive, send)  # type: ignore[operator]
    assert read == 0 and sent[0]["status"] == 401
    assert (b"connection", b"close") in sent[0]["headers"]
