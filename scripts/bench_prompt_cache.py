"""What a prompt-cache breakpoint buys: time to the first token of a request whose long system
prompt is pinned, after traffic that evicted every unpinned entry, against the same request with
caching turned off (`prompt_cache_options: {"mode": "explicit"}` and no breakpoint).

    .venv/bin/python scripts/bench_prompt_cache.py                  # starts a server on the default model
    .venv/bin/python scripts/bench_prompt_cache.py --url http://127.0.0.1:8000 --churn 40

Each round: other traffic (`--churn` different prompts, more than the server has KV slots), then
the pinned request and the uncached one, in alternating order; each timed to its first streamed
token. Medians, their ratio and the cached_tokens reported are printed and written to
bench-results/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.bench_support import report, server_at  # noqa: E402

SYSTEM = (
    "You are the support assistant of a company that sells bicycles, parts and repairs. Be brief, "
    "polite and exact; never promise delivery dates; refer legal questions to the shop. "
)


def first_token_ms(client: httpx.Client, url: str, body: dict[str, Any]) -> tuple[float, int]:
    """Milliseconds to the first content chunk, and the request's cached_tokens."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 4}
    started = time.perf_counter()
    first = None
    cached = 0
    with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"]:
                first = (time.perf_counter() - started) * 1000
            if chunk.get("usage"):
                cached = chunk["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert first is not None
    return first, cached


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--system-repeats", type=int, default=12, help="system prompt length, in repeats")
    parser.add_argument("--churn", type=int, default=24, help="other requests before each measured pair")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", default=str(REPO / "bench-results"))
    args = parser.parse_args()
    system = SYSTEM * args.system_repeats
    pinned_part = {
        "type": "text",
        "text": system,
        "prompt_cache_breakpoint": {"mode": "explicit", "ttl": "30m"},
    }
    times: dict[str, list[float]] = {"pinned": [], "uncached": []}
    cached: dict[str, list[int]] = {"pinned": [], "uncached": []}
    with server_at(args.url, "bench-prompt-cache-") as url, httpx.Client(timeout=300) as client:
        for round_ in range(args.rounds + 1):
            for i in range(args.churn):
                other = {
                    "model": args.model,
                    "max_tokens": 1,
                    "messages": [{"role": "user", "content": f"Round {round_}, question {i}: {i} + {i}?"}],
                }
                client.post(f"{url}/v1/chat/completions", json=other).raise_for_status()
            question = {"role": "user", "content": f"Round {round_}: do you repair e-bikes?"}
            bodies = {
                "pinned": {
                    "model": args.model,
                    "messages": [{"role": "system", "content": [pinned_part]}, question],
                },
                "uncached": {
                    "model": args.model,
                    "messages": [{"role": "system", "content": system}, question],
                    "prompt_cache_options": {"mode": "explicit"},
                },
            }
            order = list(bodies) if round_ % 2 else list(reversed(bodies))
            for name in order:
                ms, hit = first_token_ms(client, url, bodies[name])
                if round_ > 0:  # the first round pins the prompt and warms up
                    times[name].append(ms)
                    cached[name].append(hit)
    pinned, uncached = statistics.median(times["pinned"]), statistics.median(times["uncached"])
    results: dict[str, object] = {
        "median ms to first token, pinned system prompt": round(pinned, 1),
        "median ms to first token, caching off": round(uncached, 1),
        "uncached / pinned": round(uncached / pinned, 2),
        "median cached_tokens, pinned": statistics.median(cached["pinned"]),
        "median cached_tokens, caching off": statistics.median(cached["uncached"]),
    }
    report(results, args, "bench-prompt-cache")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
