"""Stored completions with a real server process: they outlive it (SQLite file and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.e2e.conftest import MODEL, config_with_store, free_port, start_server, wait_healthy

pytestmark = pytest.mark.e2e


def _serve(folder: Path, store_url: str, name: str) -> tuple[object, openai.OpenAI]:
    port = free_port()
    log = folder / f"{name}.log"
    process = start_server(config_with_store(folder, store_url), port, log)
    wait_healthy(process, f"http://127.0.0.1:{port}", log)
    return process, openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)


def test_stored_completions_survive_a_server_restart(tmp_path: Path, store_url: str) -> None:
    process, client = _serve(tmp_path, store_url, "first")
    try:
        created = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Name a color."}],
            max_tokens=8,
            temperature=0,
            store=True,
            metadata={"suite": "restart"},
        )
    finally:
        process.terminate()  # SIGTERM: queued writes are flushed before the process exits
        process.wait(timeout=60)
    process, client = _serve(tmp_path, store_url, "second")
    try:
        got = client.chat.completions.retrieve(created.id)
        assert got.choices[0].message.content == created.choices[0].message.content
        listed = [c.id for c in client.chat.completions.list(metadata={"suite": "restart"})]
        assert created.id in listed
        (message,) = client.chat.completions.messages.list(created.id).data
        assert message.content == "Name a color." and message.id == f"{created.id}-0"
        assert client.chat.completions.delete(created.id).deleted
    finally:
        process.terminate()
        process.wait(timeout=60)
