"""What costly grammars do to everyone else: a probe request's latency alone, then beside clients
that keep sending the schemas an adversary would (1000 required properties, `^[a-z]{1000}$`,
`allOf` x100, an enum of 20 000), both repeated (cached after the first compile) and made new each
time (every one compiled afresh).

    .venv/bin/python scripts/bench_costly_grammars.py                  # starts a server on the default model
    .venv/bin/python scripts/bench_costly_grammars.py --url http://127.0.0.1:8000

The probe is a plain 32-token greedy request, one at a time. Its median latency is measured alone,
beside the same number of clients sending the same requests without a grammar (what sharing the
batch costs by itself), and beside the costly ones; the ratios to the plain neighbours are what
the grammars cost everyone else. Printed and written to bench-results/, with what the neighbours'
requests got (200, or 400 for a grammar over the limits).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.bench_support import report, server_at  # noqa: E402


def costly_schemas(salt: str) -> list[dict]:
    """The four costly kinds; `salt` in the names makes each set a grammar never compiled before."""
    names = [f"{salt}p{i}" for i in range(1000)]
    return [
        {"type": "object", "properties": {n: {"type": "string"} for n in names}, "required": names},
        {"type": "object", "properties": {f"{salt}s": {"type": "string", "pattern": "^[a-z]{1000}$"}}},
        {
            "allOf": [
                {"type": "object", "properties": {f"{salt}q{i}": {"type": "integer"}}} for i in range(100)
            ]
        },
        {"type": "string", "enum": [f"{salt}v{i}" for i in range(20000)]},
    ]


async def probe(http: httpx.AsyncClient, model: str, i: int) -> float:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"Count from {i} upwards."}],
        "max_tokens": 32,
        "temperature": 0,
    }
    started = time.perf_counter()
    r = await http.post("/v1/chat/completions", json=body)
    r.raise_for_status()
    return time.perf_counter() - started


async def neighbour(
    http: httpx.AsyncClient, model: str, kind: str, outcomes: Counter, stop: asyncio.Event
) -> None:
    """`kind`: "plain" (the same requests without a grammar), "repeated" or "new each time"."""
    n = 0
    while not stop.is_set():
        salt = f"x{n}_" if kind == "new each time" else "x_"
        for schema in costly_schemas(salt):
            body: dict[str, object] = {
                "model": model,
                "messages": [{"role": "user", "content": "Answer in JSON."}],
                "max_tokens": 16,
            }
            if kind != "plain":
                body["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "c", "schema": schema},
                }
            r = await http.post("/v1/chat/completions", json=body)
            outcomes[str(r.status_code)] += 1
            if stop.is_set():
                return
        n += 1


async def run(url: str, model: str, probes: int, neighbours: int) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        await probe(http, model, 0)  # warm-up
        alone = [await probe(http, model, i) for i in range(1, probes + 1)]
        results: dict[str, object] = {"probe p50 s, alone": round(statistics.median(alone), 3)}
        plain = 0.0
        for round_, kind in enumerate(("plain", "repeated", "new each time")):
            outcomes: Counter = Counter()
            stop = asyncio.Event()
            tasks = [
                asyncio.create_task(neighbour(http, model, kind, outcomes, stop)) for _ in range(neighbours)
            ]
            await asyncio.sleep(1.0)  # the neighbours are under way
            beside = [await probe(http, model, 1000 * (round_ + 2) + i) for i in range(probes)]
            stop.set()
            await asyncio.gather(*tasks)
            p50 = statistics.median(beside)
            results[f"probe p50 s, beside {neighbours} {kind} neighbours"] = round(p50, 3)
            results[f"neighbours' requests answered ({kind})"] = dict(outcomes)
            if kind == "plain":
                plain = p50
            else:
                results[f"ratio to plain neighbours ({kind})"] = round(p50 / plain, 2)
        return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--probes", type=int, default=9)
    parser.add_argument("--neighbours", type=int, default=4)
    parser.add_argument("--out", default=str(REPO / "bench-results"))
    args = parser.parse_args()
    with server_at(args.url, "bench-grammars-") as url:
        results = asyncio.run(run(url, args.model, args.probes, args.neighbours))
    report(results, args, "bench-costly-grammars")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
