"""Single-stream speed of a running server (or one it starts): median tokens/s and TTFT.

    .venv/bin/python scripts/bench.py                      # starts the server on models.yaml
    .venv/bin/python scripts/bench.py --url http://127.0.0.1:8000 --runs 5

Each run is one greedy streaming completion of up to --tokens tokens (loopback only); the prompt
asks for a long story, so runs use the whole budget (the token counts are printed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.conftest import free_port, start_server, wait_healthy  # noqa: E402

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


def one_run(base: str, model: str, tokens: int) -> tuple[float, float, int]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0,
        "max_tokens": tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = None
    completion_tokens = 0
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content") and first is None:
                first = time.perf_counter()
            if chunk.get("usage"):
                completion_tokens = chunk["usage"]["completion_tokens"]
    total = time.perf_counter() - started
    ttft = (first or time.perf_counter()) - started
    return ttft, total, completion_tokens


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running server; by default one is started on models.yaml")
    parser.add_argument("--config", default=str(REPO / "models.yaml"))
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    process = None
    base = args.url
    if base is None:
        log = Path(tempfile.mkdtemp()) / "server.log"
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        started = time.perf_counter()
        process = start_server(Path(args.config), port, log)
        wait_healthy(process, base, log)
        print(f"server start-up (process start to /health 200): {time.perf_counter() - started:.1f} s")
    try:
        one_run(base, args.model, 8)  # warm-up
        results = [one_run(base, args.model, args.tokens) for _ in range(args.runs)]
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
    rates = [n / total for _, total, n in results]
    ttfts = [ttft for ttft, _, _ in results]
    print(f"runs: {args.runs}, completion tokens per run: {[n for _, _, n in results]}")
    print(
        f"single stream: median {statistics.median(rates):.1f} tokens/s "
        f"(min {min(rates):.1f}, max {max(rates):.1f}); median TTFT {statistics.median(ttfts) * 1000:.0f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
