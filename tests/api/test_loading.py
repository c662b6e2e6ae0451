"""/health is 503 while models load, chat requests get a 503 error body, then both work."""

import asyncio
import threading
from pathlib import Path

import httpx
import pytest

from server.app import create_app
from server.chat.registry import ModelRegistry
from server.config import load_config
from tests.conftest import tiny_config_yaml


class GatedRegistry(ModelRegistry):
    """The real registry, whose loading waits until the test opens the gate."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()

    def load_all(self) -> None:
        self.gate.wait(30)
        super().load_all()


async def test_health_is_503_until_loaded(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = load_config(tiny_config_yaml(tiny_model_dir, tmp_path))
    registry = GatedRegistry(config)
    app = create_app(config, registry=registry)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            r = await http.get("/health")
            assert r.status_code == 503 and r.json()["status"] == "loading"
            body = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
            r = await http.post("/v1/chat/completions", json=body)
            assert r.status_code == 503 and r.json()["error"]["type"] == "service_unavailable"
            registry.gate.set()
            for _ in range(200):
                if (await http.get("/health")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("never became healthy")
            assert (await http.post("/v1/chat/completions", json=body)).status_code == 200
