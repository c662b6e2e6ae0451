"""What stream obfuscation costs: framing time and bytes per event, with and without it.

Frames the chunks a real stream carries (one token of the default model's vocabulary per content
delta, ids drawn at random) through both framings, many rounds; prints medians.

    .venv/bin/python scripts/bench_obfuscation.py [--events 2000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

from openai.types.chat import ChatCompletionChunk
from openai.types.chat.chat_completion_chunk import Choice, ChoiceDelta
from transformers import AutoTokenizer

from server.api.obfuscation import Obfuscator
from server.api.sse import event
from server.config import load_config
from server.models.loader import converted_gguf, resolve_source

REPO = Path(__file__).resolve().parents[1]


def chunks(count: int) -> list[ChatCompletionChunk]:
    config = load_config(REPO / "models.yaml")
    spec = config.models[0]
    tokenizer = AutoTokenizer.from_pretrained(converted_gguf(spec, resolve_source(spec, REPO), config.server))
    rng = random.Random(0)
    texts = [tokenizer.decode([rng.randrange(tokenizer.vocab_size)]) for _ in range(count)]
    return [
        ChatCompletionChunk(
            id="chatcmpl-0123456789abcdef0123456789abcdef",
            created=1764547200,
            model=spec.id,
            object="chat.completion.chunk",
            system_fingerprint="fp_0123456789",
            choices=[Choice(index=0, delta=ChoiceDelta(content=text), finish_reason=None)],
        )
        for text in texts
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    sample = chunks(args.events)
    results: dict[str, list[tuple[float, float]]] = {"plain": [], "obfuscated": []}
    for _ in range(args.rounds):
        for name in results:
            frame = Obfuscator().event if name == "obfuscated" else event
            started = time.perf_counter()
            sizes = [len(frame(chunk)) for chunk in sample]
            elapsed = time.perf_counter() - started
            results[name].append((elapsed / len(sample) * 1e6, statistics.fmean(sizes)))
    plain_us = statistics.median(us for us, _ in results["plain"])
    plain_bytes = statistics.median(b for _, b in results["plain"])
    for name, rows in results.items():
        us = statistics.median(u for u, _ in rows)
        size = statistics.median(b for _, b in rows)
        print(f"{name:>10}: {us:6.2f} us/event (median of {args.rounds}), {size:6.1f} bytes/event")
    obf_us = statistics.median(u for u, _ in results["obfuscated"])
    obf_bytes = statistics.median(b for _, b in results["obfuscated"])
    print(
        f"  overhead: +{obf_us - plain_us:.2f} us/event, +{obf_bytes - plain_bytes:.1f} bytes/event "
        f"({obf_bytes / plain_bytes - 1:+.0%} bytes)"
    )


if __name__ == "__main__":
    main()
