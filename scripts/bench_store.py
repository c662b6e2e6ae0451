"""What `store: true` adds to a request's latency: the same short requests with and without it.

    .venv/bin/python scripts/bench_store.py                       # starts a server on the default model
    .venv/bin/python scripts/bench_store.py --store-url postgresql://openweights@127.0.0.1:54329/openweights
    .venv/bin/python scripts/bench_store.py --url http://127.0.0.1:8000

Requests alternate (stored, not stored, ...), one at a time, streaming and not, so both kinds see
the same machine, each with a prompt of its own; medians and their difference are printed and
written to bench-results/. Each stored one is read back (`GET /v1/chat/completions/{id}`) as soon
as its response is complete: the median time from sending the request to that read succeeding, and
how many first reads missed (404), are printed too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.bench_support import report, server_at  # noqa: E402


def timed(client: httpx.Client, url: str, model: str, store: bool, stream: bool, i: int) -> tuple[float, str]:
    """Milliseconds until the response is complete (the body, or [DONE]), and the completion's id."""
    body = {
        "model": model,
        # A prompt of its own per request: a repeated prompt would be served from the prefix cache.
        "messages": [{"role": "user", "content": f"Say a number ({2 * i + int(store)})."}],
        "max_tokens": 8,
        "temperature": 0,
        "store": store,
        "stream": stream,
        "metadata": {"bench": "store"},
    }
    started = time.perf_counter()
    completion_id = ""
    if stream:
        with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if line == "data: [DONE]":
                    break
                if not completion_id and line.startswith("data: "):
                    completion_id = json.loads(line[6:])["id"]
    else:
        r = client.post(f"{url}/v1/chat/completions", json=body)
        r.raise_for_status()
        completion_id = r.json()["id"]
    return (time.perf_counter() - started) * 1000, completion_id


def read_back(client: httpx.Client, url: str, completion_id: str) -> tuple[float, bool]:
    """Milliseconds until the stored completion could be read, and whether the first read missed."""
    started = time.perf_counter()
    missed = False
    while True:
        r = client.get(f"{url}/v1/chat/completions/{completion_id}")
        if r.status_code == 200:
            return (time.perf_counter() - started) * 1000, missed
        if r.status_code != 404 or time.perf_counter() - started > 30:
            raise RuntimeError(f"reading {completion_id} back: {r.status_code} {r.text}")
        missed = True


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--store-url", help="the server's store (default: a temporary SQLite file)")
    parser.add_argument("--requests", type=int, default=40, help="per kind and mode")
    parser.add_argument("--out", default=str(REPO / "bench-results"))
    args = parser.parse_args()
    results: dict[str, object] = {}
    with server_at(args.url, "bench-store-", args.store_url) as url, httpx.Client(timeout=120) as client:
        for stream in (False, True):
            times: dict[bool, list[float]] = {True: [], False: []}
            readable: list[float] = []
            misses = 0
            for i in range(args.requests + 2):
                for store in (True, False):
                    elapsed, completion_id = timed(client, url, args.model, store, stream, i)
                    read_ms, missed = read_back(client, url, completion_id) if store else (0.0, False)
                    if i >= 2:  # the first rounds warm up
                        times[store].append(elapsed)
                        if store:
                            readable.append(elapsed + read_ms)
                            misses += missed
            mode = "stream" if stream else "non-stream"
            stored, plain = statistics.median(times[True]), statistics.median(times[False])
            results[f"{mode} median ms, store: true"] = round(stored, 2)
            results[f"{mode} median ms, store: false"] = round(plain, 2)
            results[f"{mode} store overhead ms"] = round(stored - plain, 2)
            results[f"{mode} median ms, request sent -> stored completion read"] = round(
                statistics.median(readable), 2
            )
            results[f"{mode} first reads that missed"] = misses
    report(results, args, "bench-store")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
