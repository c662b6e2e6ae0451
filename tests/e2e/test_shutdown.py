"""SIGTERM on a real server process: new requests and /health get 503, running generations finish
up to the deadline, the rest are cancelled cleanly, and the process exits 0."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx

from tests.e2e.conftest import MODEL, config_with_store, free_port, start_server, wait_healthy

DEADLINE_S = 8


def _stream(base: str, max_tokens: int, events: list[dict | str], first: threading.Event) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a very long story about a lighthouse keeper."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=120) as response:
        events.append(str(response.status_code))
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            payload = line.removeprefix("data: ")
            events.append(payload if payload == "[DONE]" else json.loads(payload))
            if any(
                isinstance(e, dict) and e.get("choices") and e["choices"][0]["delta"].get("content")
                for e in events
            ):
                first.set()


def test_sigterm_drains_then_exits_zero(tmp_path: Path) -> None:
    config = config_with_store(tmp_path, f"sqlite:///{tmp_path / 'store.sqlite3'}")
    config.write_text(config.read_text() + f"  shutdown_timeout_s: {DEADLINE_S}\n  log_format: json\n")
    port, log = free_port(), tmp_path / "server.log"
    process = start_server(config, port, log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(process, base, log)
        short: list[dict | str] = []
        long: list[dict | str] = []
        started = [threading.Event(), threading.Event()]
        threads = [
            threading.Thread(target=_stream, args=(base, 8, short, started[0])),
            threading.Thread(target=_stream, args=(base, 1500, long, started[1])),
        ]
        for thread in threads:
            thread.start()
        assert all(event.wait(120) for event in started), log.read_text()[-3000:]
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)

        health = httpx.get(f"{base}/health", timeout=10)
        assert health.status_code == 503 and health.json()["status"] == "draining"
        refused = httpx.post(
            f"{base}/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
            timeout=10,
        )
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "server_shutting_down"

        for thread in threads:
            thread.join(timeout=DEADLINE_S + 60)
        # The short generation finished normally within the deadline.
        assert short[0] == "200" and short[-1] == "[DONE]"
        finishes = [
            e["choices"][0]["finish_reason"] for e in short if isinstance(e, dict) and e.get("choices")
        ]
        assert finishes[-1] == "length" and not any(isinstance(e, dict) and "error" in e for e in short)
        # The long one was cancelled at the deadline: an error event, then [DONE] (never a cut stream).
        assert long[0] == "200" and long[-1] == "[DONE]"
        error = long[-2]
        assert isinstance(error, dict) and error["error"]["code"] == "server_shutting_down"
        assert process.wait(timeout=60) == 0
        assert time.monotonic() - signalled < DEADLINE_S + 30
        # JSON log lines: one access line per request, with its id; uvicorn's own lines too.
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        access = [line for line in lines if line["logger"] == "server.access"]
        assert any(a["status"] == 503 and a["path"] == "/health" and a["request_id"] for a in access)
        assert any(a["status"] == 200 and a["route"] == "/v1/chat/completions" for a in access)
        assert any(line["logger"].startswith("uvicorn") for line in lines)
    finally:
        if process.poll() is None:
            process.kill()
