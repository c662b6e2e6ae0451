"""What proposed tokens buy: `prediction` (predicted outputs) and prompt lookup, on the default model.

    .venv/bin/python scripts/bench_prediction.py                 # starts the servers it needs
    .venv/bin/python scripts/bench_prediction.py --rounds 5 --skip-lookup

Workloads (temperature 0, end-to-end latency of non-streamed requests, rounds alternating the two
variants, medians; every predicted answer is checked to be the same text as without):

- `code_edit`: a ~400-token source file and a one-line change asked for; prediction = the file.
- `own_answer_edited`: the same request; prediction = the plain answer with one line changed (what
  a model that follows the file is given: the output diverges at the edit and re-joins after it).
  SmolLM2-135M does not repeat a file it is asked to edit, so this is the mechanism's speed-up on
  a prediction that is right but for one line.
- `wrong`: a prediction unrelated to the answer (wrong from its first token).
- `lookup` (two servers: `engine.speculation.method` ngram and none): answers that quote their
  prompt, at 1 and 16 concurrent streams; aggregate output tokens/s of each, and their ratio.

Results are printed and written to bench-results/.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.bench_support import report  # noqa: E402
from tests.e2e.conftest import config_with_store, serving  # noqa: E402

MODEL = "smollm2-135m-instruct"
SOURCE = """import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Item:
    name: str
    price: float
    quantity: int = 1
    tags: list[str] = field(default_factory=list)

    def total(self) -> float:
        return self.price * self.quantity


@dataclass
class Inventory:
    items: dict[str, Item] = field(default_factory=dict)

    def add(self, item: Item) -> None:
        if item.name in self.items:
            self.items[item.name].quantity += item.quantity
        else:
            self.items[item.name] = item

    def remove(self, name: str, quantity: int = 1) -> None:
        item = self.items[name]
        item.quantity -= quantity
        if item.quantity <= 0:
            del self.items[name]

    def value(self) -> float:
        return sum(item.total() for item in self.items.values())

    def tagged(self, tag: str) -> list[Item]:
        return [item for item in self.items.values() if tag in item.tags]

    def save(self, path: Path) -> None:
        data = {name: vars(item) for name, item in self.items.items()}
        path.write_text(json.dumps(data, indent=2))

    @classmethod
    def load(cls, path: Path) -> "Inventory":
        data = json.loads(path.read_text())
        return cls({name: Item(**fields) for name, fields in data.items()})
"""
EDIT = "In this file, make `value` round its result to two decimals. Reply with the whole file.\n\n"
UNRELATED = "The committee met on Thursday to review the budget for the coming year. " * 12
QUOTES = [
    "Here is a passage:\n\n{text}\n\nQuote the passage's second paragraph exactly, then its first.",
    "Read this:\n\n{text}\n\nCopy the text above word for word.",
]
PASSAGES = [
    "The river rises in the hills above the town and runs south through the valley for forty miles. "
    "Mills were built along it in the eighteenth century.\n\nBy 1850 the mills employed most of the "
    "town, and the railway that followed brought coal and took away cloth. The last mill closed in "
    "1962.",
    "Bread needs flour, water, salt and yeast. Mix them, knead the dough for ten minutes and let it "
    "rise for an hour.\n\nShape the loaf, let it rise again, and bake it at 220 degrees for thirty "
    "minutes, until it sounds hollow when tapped underneath.",
    "The library opens at nine and closes at six on weekdays. On Saturdays it closes at one.\n\n"
    "Members may borrow six books at a time for three weeks, and renew them twice unless another "
    "member has reserved them.",
    "A good password is long, unique to each site and kept in a password manager.\n\nTwo-factor "
    "authentication adds a second check, such as a code from an app, so that a stolen password "
    "alone does not open the account.",
]


def chat(
    client: httpx.Client, url: str, messages: list[dict], max_tokens: int, **extra: Any
) -> tuple[float, dict]:
    body = {"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": max_tokens, **extra}
    started = time.perf_counter()
    r = client.post(f"{url}/v1/chat/completions", json=body, timeout=600)
    r.raise_for_status()
    return time.perf_counter() - started, r.json()


def edited(text: str) -> str:
    lines = text.split("\n")
    lines[len(lines) // 2] = "    # (this line was changed)"
    return "\n".join(lines)


def compare(client: httpx.Client, url: str, rounds: int, name: str, prediction_of: Any) -> dict[str, Any]:
    """Median latency without and with the prediction (alternating), identical text, usage."""
    messages = [{"role": "user", "content": EDIT + SOURCE}]
    _, first = chat(client, url, messages, 600)
    text = first["choices"][0]["message"]["content"]
    prediction = {"type": "content", "content": prediction_of(text)}
    plain_s, predicted_s, same = [], [], True
    details: dict[str, Any] = {}
    for round_ in range(rounds):
        order = [False, True] if round_ % 2 == 0 else [True, False]
        for with_prediction in order:
            extra = {"prediction": prediction} if with_prediction else {}
            seconds, answer = chat(client, url, messages, 600, **extra)
            (predicted_s if with_prediction else plain_s).append(seconds)
            if with_prediction:
                same &= answer["choices"][0]["message"]["content"] == text
                details = answer["usage"]["completion_tokens_details"]
    plain, predicted = statistics.median(plain_s), statistics.median(predicted_s)
    print(f"{name}: {plain:.2f} s without, {predicted:.2f} s with the prediction ({plain / predicted:.2f}x)")
    return {
        "completion_tokens": first["usage"]["completion_tokens"],
        "plain_s": round(plain, 3),
        "predicted_s": round(predicted, 3),
        "speedup": round(plain / predicted, 2),
        "same_text": same,
        "accepted_prediction_tokens": details.get("accepted_prediction_tokens"),
        "rejected_prediction_tokens": details.get("rejected_prediction_tokens"),
    }


def quote_messages(index: int) -> list[dict]:
    template = QUOTES[index % len(QUOTES)]
    return [{"role": "user", "content": template.format(text=PASSAGES[index % len(PASSAGES)])}]


def throughput(url: str, streams: int, requests_per_stream: int) -> dict[str, Any]:
    """Aggregate completion tokens/s of `streams` workers sending quote requests back to back."""

    def worker(offset: int) -> tuple[int, list[str]]:
        tokens, texts = 0, []
        with httpx.Client() as client:
            for i in range(requests_per_stream):
                _, answer = chat(client, url, quote_messages(offset + i), 200)
                tokens += answer["usage"]["completion_tokens"]
                texts.append(answer["choices"][0]["message"]["content"])
        return tokens, texts

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        results = list(pool.map(worker, range(streams)))
    seconds = time.perf_counter() - started
    tokens = sum(t for t, _ in results)
    return {"tok_s": round(tokens / seconds, 1), "texts": [t for _, texts in results for t in texts]}


@contextmanager
def our_server(folder: Path, speculation: str | None) -> Iterator[str]:
    config = config_with_store(folder, f"sqlite:///{folder / 'completions.sqlite3'}")
    if speculation is not None:
        text = config.read_text(encoding="utf-8")
        text = text.replace(
            "    context_length: 8192\n",
            f"    context_length: 8192\n    engine:\n      speculation: {{method: {speculation}}}\n",
            1,
        )
        config.write_text(text, encoding="utf-8")
    with serving(config, folder / "server.log") as (base, _):
        yield base


def lookup(levels: list[int], requests_per_stream: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for method in ("none", "ngram"):
        with our_server(Path(tempfile.mkdtemp(prefix=f"bench-lookup-{method}-")), method) as url:
            throughput(url, 1, 1)  # warm-up
            runs[method] = {level: throughput(url, level, requests_per_stream) for level in levels}
    for level in levels:
        off, on = runs["none"][level], runs["ngram"][level]
        results[f"lookup_c{level}"] = {
            "tok_s_none": off["tok_s"],
            "tok_s_ngram": on["tok_s"],
            "speedup": round(on["tok_s"] / off["tok_s"], 2),
            "same_text": off["texts"] == on["texts"],
        }
        print(f"lookup at {level}: {off['tok_s']} -> {on['tok_s']} tok/s ({on['tok_s'] / off['tok_s']:.2f}x)")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="benchmark this running server for the prediction workloads")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--levels", default="1,16")
    parser.add_argument("--requests-per-stream", type=int, default=2)
    parser.add_argument("--skip-lookup", action="store_true")
    parser.add_argument("--out", default=str(REPO / "bench-results"))
    args = parser.parse_args()
    results: dict[str, Any] = {}

    @contextmanager
    def prediction_server() -> Iterator[str]:
        if args.url:
            yield args.url
            return
        with our_server(Path(tempfile.mkdtemp(prefix="bench-prediction-")), None) as url:
            yield url

    with prediction_server() as url, httpx.Client() as client:
        chat(client, url, [{"role": "user", "content": "Hello"}], 8)  # warm-up
        results["code_edit"] = compare(client, url, args.rounds, "code_edit", lambda text: SOURCE)
        results["own_answer_edited"] = compare(client, url, args.rounds, "own_answer_edited", edited)
        results["wrong"] = compare(client, url, args.rounds, "wrong", lambda text: UNRELATED)
    if not args.skip_lookup:
        results.update(lookup([int(n) for n in args.levels.split(",")], args.requests_per_stream))
    report(results, args, "prediction")


if __name__ == "__main__":
    main()
