"""Time to the first streamed token through a proxy and straight to a server, alternating, medians.

    .venv/bin/python scripts/bench_proxy_ttft.py http://127.0.0.1:18400 http://127.0.0.1:18401 [runs]

(scripts/replicas.sh start DIR prints the ports: nginx first, then a replica.) The ratio is what
to read: both are measured in the same run on the same machine."""

from __future__ import annotations

import statistics
import sys
import time

import openai

MODEL = "smollm2-135m-instruct"


def first_token_s(base: str) -> float:
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    started = time.perf_counter()
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say something."}], max_tokens=16, stream=True
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            elapsed = time.perf_counter() - started
            stream.close()
            return elapsed
    return time.perf_counter() - started


def main() -> None:
    proxy, direct = sys.argv[1], sys.argv[2]
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    times: dict[str, list[float]] = {proxy: [], direct: []}
    for _ in range(runs):
        for base in (proxy, direct):
            times[base].append(first_token_s(base))
    through, straight = statistics.median(times[proxy]), statistics.median(times[direct])
    print(
        f"first token, median of {runs}: through {proxy} {through * 1000:.1f} ms, direct {direct} "
        f"{straight * 1000:.1f} ms, ratio {through / straight:.2f}"
    )


if __name__ == "__main__":
    main()
