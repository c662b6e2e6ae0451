"""Clients that stop reading, or send their bodies slowly, cannot hold the server (a real server
process with the tiny random-weight model, driven over raw sockets)."""

from __future__ import annotations

import json
import re
import signal
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


KEY = "sk-slow-clients-0123456789"


def _read_response(sock: socket.socket, timeout: float) -> tuple[int, dict, bytes]:
    """One HTTP/1.1 response from the socket: (status, headers, body by Content-Length)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    headers = {k.lower(): v for k, v in headers.items()}
    while len(body) < int(headers.get("content-length", "0")):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, body


def _slow_body(base: str, auth: str = "", declared: int = 10_000) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n{auth}\r\n{{"
    )
    sock.sendall(head.encode())
    return sock


def test_slow_bodies_get_no_hold_on_the_server(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Slowloris: without a key, 401 from the headers alone (the body is never waited for); with
    one, a body not received within body_timeout_s is a 408; others are served meanwhile."""
    (tmp_path / "keys.yaml").write_text(f"keys:\n  - key: {KEY}\n    project: p\n")
    settings = "  api_keys_file: keys.yaml\n  body_timeout_s: 2\n"
    with tiny_server(tiny_model_dir, tmp_path, settings) as (base, log):
        anonymous = [_slow_body(base) for _ in range(30)]
        keyed = _slow_body(base, f"Authorization: Bearer {KEY}\r\n")
        started = time.monotonic()
        try:
            for sock in anonymous:
                status, headers, body = _read_response(sock, timeout=5)
                assert status == 401 and headers.get("connection") == "close"
                assert json.loads(body)["error"]["code"] == "invalid_api_key"
            assert time.monotonic() - started < 2  # answered at once, not after any body timeout
            ok = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            auth = {"Authorization": f"Bearer {KEY}"}
            assert (
                httpx.post(f"{base}/v1/chat/completions", json=ok, headers=auth, timeout=30).status_code
                == 200
            )
            for _ in range(3):  # a byte now and then does not keep it alive
                keyed.sendall(b" ")
                time.sleep(0.5)
            status, headers, body = _read_response(keyed, timeout=5)
            error = json.loads(body)["error"]
            assert status == 408 and error["code"] == "request_timeout" and set(error) >= {"message", "param"}
            assert 2 <= time.monotonic() - started < 4
        finally:
            for sock in [*anonymous, keyed]:
                sock.close()
        assert "Traceback" not in log.read_text()


def test_an_unexpected_500_leaves_the_connection_usable(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A chat template that fails with a TypeError (a bug of the model's set-up, not of the request):
    the 500 is in OpenAI's shape, and the same keep-alive connection serves the next request."""
    broken = "{{ messages[0]['content'] + 1 }}"
    config_line = f'    chat_template: "{broken}"\n'
    config = tiny_config_yaml(tiny_model_dir, tmp_path, config_line)
    log = tmp_path / "server.log"
    with serving(config, log) as (base, _):
        host, port = base.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)))
        body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}).encode()
        request = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        sock.sendall(request)
        status, headers, payload = _read_response(sock, timeout=30)
        assert status == 500 and json.loads(payload)["error"]["type"] == "server_error"
        assert headers.get("connection") != "close"
        sock.sendall(f"GET /v1/models HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        status, _, payload = _read_response(sock, timeout=30)  # the same connection, still open
        assert status == 200 and json.loads(payload)["data"][0]["id"] == "tiny"
        sock.close()


def test_sigterm_exits_within_the_deadline_whatever_the_clients_do(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A client sending its body a byte at a time, one that never reads its stream, and one that
    reads a long stream: the process still exits, status 0, within shutdown_timeout_s + 3 s."""
    deadline = 3
    config = tiny_config_yaml(tiny_model_dir, tmp_path)
    config.write_text(config.read_text() + f"  shutdown_timeout_s: {deadline}\n  body_timeout_s: 60\n")
    log = tmp_path / "server.log"
    with serving(config, log) as (base, process):
        slow = _slow_body(base)
        long = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "go"}],
            "max_tokens": 450,
            "stream": True,
        }
        unread = _raw_request(base, json.dumps({**long, "n": 4}).encode(), rcvbuf=4096)
        reading = httpx.stream("POST", f"{base}/v1/chat/completions", json=long, timeout=60)
        response = reading.__enter__()
        lines = response.iter_lines()
        next(lines)
        try:
            assert _until(lambda: _gauge(base, "parked_sequences") >= 1, 60)
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            slow.sendall(b" ")
            assert process.wait(timeout=deadline + 30) == 0
            took = time.monotonic() - signalled
        finally:
            for sock in (slow, unread):
                sock.close()
            reading.__exit__(None, None, None)
        assert took < deadline + 3, f"exit took {took:.1f} s"
        text = log.read_text()
        assert "Traceback" not in text and "drained" in text
