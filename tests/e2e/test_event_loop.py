"""Big prompts are handled off the event loop: the server keeps answering while they arrive."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.e2e.conftest import MODEL

pytestmark = pytest.mark.e2e


def _send(base: str, text: str, count: int, codes: list[str]) -> None:
    with httpx.Client(timeout=120) as client:
        for i in range(count):
            body = {"model": MODEL, "messages": [{"role": "user", "content": f"{text}{i}"}], "max_tokens": 4}
            r = client.post(f"{base}/v1/chat/completions", json=body)
            codes.append(r.json()["error"]["code"] if r.status_code == 400 else str(r.status_code))


def test_health_stays_fast_while_megabyte_prompts_arrive(server_url: str) -> None:
    latencies: list[float] = []
    done = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=30) as client:
            # Probes while the prompts arrive; on a fast machine they are over in a moment, so
            # every probe counts while they are in flight (and the count does not hang on speed).
            while not done.is_set():
                started = time.perf_counter()
                assert client.get(f"{server_url}/health").status_code == 200
                latencies.append(time.perf_counter() - started)
                time.sleep(0.002)

    codes: list[str] = []
    # 3.9 MB: more tokens than the context by a cheap bound; 600 kB: tokenized, then over the context.
    senders = [
        threading.Thread(target=_send, args=(server_url, "word " * 780_000, 4, codes)),
        threading.Thread(target=_send, args=(server_url, "hello there " * 50_000, 4, codes)),
    ]
    poller = threading.Thread(target=poll)
    poller.start()
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    done.set()
    poller.join()
    assert codes == ["context_length_exceeded"] * 8
    latencies.sort()
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)]
    assert len(latencies) >= 10 and p99 < 0.1, f"/health p99 {p99 * 1000:.0f} ms over {len(latencies)} probes"
