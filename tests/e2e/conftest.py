"""A real server process on a free port with the real default model, driven by the openai SDK."""

from __future__ import annotations

import inspect
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

REPO = Path(__file__).resolve().parents[2]
MODEL = "smollm2-135m-instruct"


def served_in_float32() -> bool:
    """Whether the default model runs in float32 here (auto picks bfloat16 on CUDA, float32 on every CPU).

    In bfloat16, batched and single-row matrix multiplies round differently, so greedy outputs under
    load may differ from outputs alone; the tests that compare them are exact only in float32.
    """
    import torch

    from server.config import load_config
    from server.models.loader import pick_device, pick_dtype

    spec = load_config(REPO / "models.yaml").models[0]
    return pick_dtype(spec, pick_device(spec)) == torch.float32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(config: Path, port: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "server", "serve", "--config", str(config), "--host", "127.0.0.1"]
    return subprocess.Popen(
        [*command, "--port", str(port)],
        cwd=REPO,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def wait_healthy(process: subprocess.Popen, base: str, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"server not healthy after {timeout}s:\n{log.read_text()[-3000:]}")


@contextmanager
def serving(config: Path, log: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A server process for `config` on a free port, healthy: (its base URL, the process). Stopped
    (SIGTERM, then SIGKILL) at the end unless the caller already stopped it."""
    port = free_port()
    process = start_server(config, port, log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(process, base, log)
        yield base, process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def config_with_store(folder: Path, store_url: str) -> Path:
    """The repository's models.yaml, with completions stored at `store_url` (not in the home folder)."""
    config = folder / "models.yaml"
    text = (REPO / "models.yaml").read_text(encoding="utf-8")
    config.write_text(f"{text}\nserver:\n  store_url: {store_url}\n", encoding="utf-8")
    return config


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("server")
    config = config_with_store(folder, f"sqlite:///{folder / 'completions.sqlite3'}")
    with serving(config, folder / "server.log") as (base, _):
        yield base


@pytest.fixture(scope="session")
def sync_client(server_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture
def async_client(server_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0, timeout=300)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each async e2e test gets an event loop of its own. Twice in ~10 full runs, an e2e client on
    the session-wide loop (shared with the in-process API tests before it) stopped reading
    responses that had arrived (they sat in the socket buffers, the loop idle in epoll_wait); a
    fresh loop per test keeps the tests of a real server independent of that shared state."""
    e2e = Path(__file__).parent
    for item in items:
        function = getattr(item, "function", None)
        if e2e in Path(str(item.fspath)).parents and inspect.iscoroutinefunction(function):
            item.add_marker(pytest.mark.asyncio(loop_scope="function"))
