"""Many models on one server: loaded at start-up or on the first request, unloaded when idle past
keep_alive or to make room under max_loaded_bytes (least recently used first; 429 when nothing
can be freed), aliases, state and capabilities in /v1/models and /health, admin load/unload."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from server.config import load_config
from server.models.footprint import estimate_bytes
from tests.api.conftest import assert_error, in_process, running_app, until

ASK = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2}


def models_yaml(tmp_path: Path, model_dir: Path, models: str, server: str = "") -> Path:
    path = tmp_path / "models.yaml"
    entries = "".join(
        f"  - id: {name}\n    source: {{path: {model_dir}}}\n    dtype: float32\n    device: cpu\n"
        f"    engine: {{max_kv_tokens: 1024}}\n{extra}"
        for name, extra in _parse(models)
    )
    store = f"  store_url: sqlite:///{tmp_path / 'c.sqlite3'}\n"
    path.write_text(f"models:\n{entries}server:\n{store}{server}", encoding="utf-8")
    return path


def _parse(models: str) -> list[tuple[str, str]]:
    """`name: extra yaml lines` blocks separated by `;`."""
    out = []
    for block in models.split(";"):
        name, _, extra = block.strip().partition(":")
        lines = "".join(f"    {line.strip()}\n" for line in extra.split("|") if line.strip())
        out.append((name.strip(), lines))
    return out


@asynccontextmanager
async def client_for(config: Path) -> AsyncIterator[tuple[httpx.AsyncClient, object]]:
    async with running_app(config) as app, in_process(app) as http:
        yield http, app.state.registry


async def state(http: httpx.AsyncClient, model: str) -> str:
    return (await http.get(f"/v1/models/{model}")).json()["state"]


async def test_on_demand_models_load_on_their_first_request_and_leave_after_keep_alive(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    config = models_yaml(tmp_path, tiny_model_dir, "first; second: aliases: [gpt-4o-mini] | keep_alive: 1s")
    async with client_for(config) as (http, registry):
        listed = {m["id"]: m for m in (await http.get("/v1/models")).json()["data"]}
        assert listed.keys() == {"first", "second", "gpt-4o-mini"}
        assert listed["first"]["loaded"] is True and listed["first"]["load"] == "startup"
        assert listed["second"]["state"] == "unloaded" and listed["second"]["load"] == "on_demand"
        assert listed["gpt-4o-mini"]["alias_of"] == "second"
        health = (await http.get("/health")).json()
        assert health["status"] == "ok" and health["models"]["second"] == {"state": "unloaded"}

        r = await http.post("/v1/chat/completions", json={"model": "gpt-4o-mini", **ASK})
        assert r.status_code == 200 and r.json()["model"] == "gpt-4o-mini"
        assert await state(http, "second") == "ready"
        # Idle for its keep_alive (1 s): unloaded; the start-up model stays.
        assert await until(lambda: registry.slot("second").state.value == "unloaded", seconds=10)
        assert await state(http, "first") == "ready"
        assert registry.slot("second").unloads == 1
        # Asked for again: loaded again.
        assert (await http.post("/v1/chat/completions", json={"model": "second", **ASK})).status_code == 200
        metrics = (await http.get("/metrics")).text
        assert 'openweights_model_loads_total{model="second"} 2.0' in metrics
        assert 'openweights_model_state{model="first",state="ready"} 1.0' in metrics


async def test_capabilities_are_listed_beside_openais_fields(tiny_model_dir: Path, tmp_path: Path) -> None:
    async with client_for(models_yaml(tmp_path, tiny_model_dir, "first")) as (http, _):
        model = (await http.get("/v1/models/first")).json()
        assert {k: model[k] for k in ("id", "object", "owned_by")} == {
            "id": "first",
            "object": "model",
            "owned_by": "openweights-server",
        }
        assert model["created"] > 0 and model["context_length"] == 512 and model["tools"] is True
        assert model["tool_format"] == "hermes" and model["input_modalities"] == ["text"]
        assert model["quantization"] == "none" and model["memory_bytes"] > 0 and model["keep_alive"] == -1


async def test_the_least_recently_used_idle_model_makes_room_and_a_busy_one_is_a_429(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    probe = load_config(models_yaml(tmp_path, tiny_model_dir, "first"))
    one = estimate_bytes(probe.models[0], probe)
    # Room for two of them: the start-up model (never unloaded: keep_alive -1) and one more.
    config = models_yaml(
        tmp_path,
        tiny_model_dir,
        "first; second; third",
        f"  max_loaded_bytes: {int(one * 2.5)}\n",
    )
    async with client_for(config) as (http, registry):
        assert (await http.post("/v1/chat/completions", json={"model": "second", **ASK})).status_code == 200
        assert (await http.post("/v1/chat/completions", json={"model": "third", **ASK})).status_code == 200
        assert [await state(http, m) for m in ("first", "second", "third")] == ["ready", "unloaded", "ready"]

        # While a request is using third (it holds a lease), second cannot be given room: 429.
        lease = await registry.acquire("third")
        r = await http.post("/v1/chat/completions", json={"model": "second", **ASK})
        assert_error(r, 429)
        assert r.headers["Retry-After"].isdigit() and "max_loaded_bytes" in r.json()["error"]["message"]
        registry.release(lease)
        # Idle again: third makes room for second.
        assert (await http.post("/v1/chat/completions", json={"model": "second", **ASK})).status_code == 200
        assert [await state(http, m) for m in ("first", "second", "third")] == ["ready", "ready", "unloaded"]


async def test_a_model_larger_than_the_budget_fails_naming_why(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = models_yaml(tmp_path, tiny_model_dir, "first; second", "  max_loaded_bytes: {cpu: 1000}\n")
    # The start-up model alone is over the budget: the server does not start, naming it.
    with pytest.raises(AssertionError, match="max_loaded_bytes"):
        async with client_for(config):
            pass


@pytest.fixture
def keys_config(tiny_model_dir: Path, tmp_path: Path) -> Path:
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        "keys:\n  - {key: user-key-123, project: a}\n  - {key: admin-key-123, project: ops, admin: true}\n",
        encoding="utf-8",
    )
    return models_yaml(tmp_path, tiny_model_dir, "first; second", f"  api_keys_file: {keys}\n")


async def test_admin_keys_load_and_unload_models(keys_config: Path) -> None:
    user = {"Authorization": "Bearer user-key-123"}
    admin = {"Authorization": "Bearer admin-key-123"}
    async with client_for(keys_config) as (http, registry):
        assert_error(await http.post("/v1/models/second/load"), 401)
        assert_error(await http.post("/v1/models/second/load", headers=user), 403, code="admin_key_required")
        r = await http.post("/v1/models/second/load", headers=admin)
        assert r.status_code in (200, 202) and r.json()["state"] in ("loading", "ready")
        assert await until(lambda: registry.slot("second").state.value == "ready", seconds=30)
        assert_error(await http.post("/v1/models/second/unload", headers=user), 403)
        r = await http.post("/v1/models/second/unload", headers=admin)
        assert r.status_code == 200 and r.json()["state"] == "unloaded"
        assert_error(await http.post("/v1/models/nothing/load", headers=admin), 404, code="model_not_found")
        # A user key still reads the listing and chats.
        assert (await http.get("/v1/models", headers=user)).status_code == 200
