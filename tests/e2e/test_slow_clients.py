"""Clients that stop reading, or send their bodies slowly, cannot hold the server (a real server
process with the tiny random-weight model, driven over raw sockets)."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import tiny_config_yaml
from tests.e2e.conftest import serving

pytestmark = pytest.mark.e2e


@contextmanager
def tiny_server(model_dir: Path, folder: Path, settings: str = "") -> Iterator[tuple[str, Path]]:
    config = tiny_config_yaml(model_dir, folder)
    config.write_text(config.read_text() + settings)
    log = folder / "server.log"
    with serving(config, log) as (base, _):
        yield base, log


def _raw_request(base: str, body: bytes, headers: str = "", rcvbuf: int | None = None) -> socket.socket:
    """Sends a POST to the chat route and returns the socket, unread (a small receive buffer makes
    the server's writes back up soon, as for a client that stopped reading)."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((host, int(port)))
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{headers}\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def _gauge(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    found = re.search(rf"^openweights_{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_clients_that_stop_reading_hold_no_batch_slot(tiny_model_dir: Path, tmp_path: Path) -> None:
    """8 streams of n=4, 450 tokens each, never read: they are parked once their output backs up,
    a short request is served at once, and after stalled_stream_timeout_s they are given up."""
    with tiny_server(tiny_model_dir, tmp_path, "  stalled_stream_timeout_s: 20\n") as (base, log):
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "go"}],
            "n": 4,
            "max_tokens": 450,  # the tiny model's context is 512
            "stream": True,
        }
        readers = [
            _raw_request(base, json.dumps({**body, "seed": i}).encode(), rcvbuf=4096) for i in range(8)
        ]
        try:
            assert _until(lambda: _gauge(base, "parked_sequences") == 32, 60), log.read_text()[-2000:]
            assert _gauge(base, "running_sequences") == 0
            started = time.monotonic()
            probe = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            r = httpx.post(f"{base}/v1/chat/completions", json=probe, timeout=60)
            probe_s = time.monotonic() - started
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
            assert probe_s < 3, f"probe took {probe_s:.1f} s beside 8 non-reading streams"
            # Nobody reads them: given up after the timeout, their sequences gone from the engine.
            assert _until(lambda: _gauge(base, "stalled_streams_total") == 8, 45)
            assert _until(lambda: _gauge(base, "parked_sequences") == 0, 10)
        finally:
            for sock in readers:
                sock.close()
        assert "Traceback" not in log.read_text()
