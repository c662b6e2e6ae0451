"""Soak test: many concurrent clients for a while, mixing everything a busy server sees.

    .venv/bin/python scripts/soak.py                          # default model, 16 clients, 120 s
    .venv/bin/python scripts/soak.py --clients 32 --seconds 600
    .venv/bin/python scripts/soak.py --url http://127.0.0.1:8000 --model smollm2-135m-instruct

Each client loops over a seeded random mix: plain and streamed completions, streams the client
abandons after a few chunks, non-streamed requests it gives up on, invalid bodies (malformed JSON,
unknown fields, wrong types, unknown model, too many choices), poison input (lone surrogates,
NaN, deep nesting, odd logit_bias keys, grammars past the limits), bodies sent a byte at a time,
streams whose client stops reading, long prompts, prompts over the context, JSON-schema outputs
and stored completions read back. Loopback only, bounded in time. The server it starts gives slow
bodies 5 s and stalled streams 10 s (`server.body_timeout_s`, `server.stalled_stream_timeout_s`).

Before the load, a warm-up round at full concurrency brings the server to its steady state (KV
pool, caches); its resident memory then is the baseline. After the load, once the server is idle,
its memory must be back near that baseline. The run fails (exit 1) on any unexpected answer: a
5xx, an error body not in OpenAI's shape, a valid request not answered, a stream without [DONE],
an invalid request not refused with the right status, or memory that did not come back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.bench import RssSampler  # noqa: E402
from tests.e2e.conftest import MODEL, config_with_store, free_port, start_server, wait_healthy  # noqa: E402

# Memory may settle this far above the baseline and still count as back (allocator noise).
MEMORY_SLACK_MB = 64.0
MEMORY_SLACK_RATIO = 0.02
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "wizards", "judge")


@dataclass
class Tally:
    counts: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    valid_sent: int = 0
    valid_answered: int = 0

    def bad(self, scenario: str, detail: str) -> None:
        self.counts[f"{scenario}: UNEXPECTED"] += 1
        if len(self.unexpected) < 50:
            self.unexpected.append(f"{scenario}: {detail[:400]}")


def _is_openai_error(response: httpx.Response) -> bool:
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}


# The server soak.py starts answers slow clients sooner than the defaults do, so they come and go
# several times within a run.
SERVER_SETTINGS = "  body_timeout_s: 5\n  stalled_stream_timeout_s: 10\n"


def _nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def _ref_cycle() -> dict:
    node = {"type": "object", "properties": {"x": {"$ref": "#/$defs/a"}}, "required": ["x"]}
    return {"$ref": "#/$defs/a", "$defs": {"a": node}}


def _prompt(rng: random.Random, words: int) -> list[dict[str, str]]:
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    return [{"role": "user", "content": f"Continue this text: {text}"}]


class Client:
    def __init__(self, http: httpx.AsyncClient, model: str, rng: random.Random, tally: Tally) -> None:
        self.http, self.model, self.rng, self.tally = http, model, rng, tally

    def body(self, **extra: object) -> dict[str, object]:
        body: dict[str, object] = {
            "model": self.model,
            "messages": _prompt(self.rng, self.rng.randint(3, 40)),
            "max_tokens": self.rng.randint(4, 48),
            "temperature": self.rng.choice([0, 0.7, 1.0]),
        }
        body.update(extra)
        return body

    async def valid(
        self, scenario: str, body: dict[str, object], check: Callable[[dict], str | None]
    ) -> None:
        self.tally.valid_sent += 1
        response = await self.http.post("/v1/chat/completions", json=body)
        if response.status_code != 200:
            self.tally.bad(scenario, f"{response.status_code} {response.text}")
            return
        problem = check(response.json())
        if problem:
            self.tally.bad(scenario, problem)
            return
        self.tally.valid_answered += 1
        self.tally.counts[scenario] += 1

    async def chat(self) -> None:
        def check(data: dict) -> str | None:
            finishes = {c["finish_reason"] for c in data["choices"]}
            return None if finishes <= {"stop", "length"} else f"finish {finishes}"

        await self.valid("chat", self.body(n=self.rng.choice([1, 1, 2])), check)

    async def stream(self) -> None:
        self.tally.valid_sent += 1
        async with self.http.stream("POST", "/v1/chat/completions", json=self.body(stream=True)) as response:
            if response.status_code != 200:
                await response.aread()
                self.tally.bad("stream", f"{response.status_code} {response.text}")
                return
            lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
        if not lines or lines[-1] != "data: [DONE]" or any('"error"' in line for line in lines):
            self.tally.bad("stream", f"ended with {lines[-2:]}")
            return
        self.tally.valid_answered += 1
        self.tally.counts["stream"] += 1

    async def abandoned_stream(self) -> None:
        body = self.body(stream=True, max_tokens=200)
        async with self.http.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                self.tally.bad("abandoned_stream", f"{response.status_code} {response.text}")
                return
            seen = 0
            async for line in response.aiter_lines():
                seen += line.startswith("data: ")
                if seen >= self.rng.randint(1, 6):
                    break  # leaving the block closes the connection mid-stream
        self.tally.counts["abandoned_stream"] += 1

    async def abandoned_request(self) -> None:
        with contextlib.suppress(httpx.TimeoutException):  # the client gives up: the server must stop too
            await self.http.post(
                "/v1/chat/completions", json=self.body(max_tokens=200), timeout=self.rng.uniform(0.2, 1.5)
            )
        self.tally.counts["abandoned_request"] += 1

    async def invalid(self) -> None:
        cases: list[tuple[str, bytes | dict, int]] = [
            ("malformed_json", b'{"model": ', 400),
            ("unknown_field", self.body(frobnicate=True), 400),
            ("wrong_type", self.body(temperature="hot"), 400),
            ("no_messages", {"model": self.model, "messages": []}, 400),
            ("unknown_model", self.body(model="no-such-model"), 404),
            ("too_many_choices", self.body(n=100000), 400),
            ("bad_role", {"model": self.model, "messages": [{"role": "robot", "content": "x"}]}, 400),
            (
                "bad_schema",
                self.body(response_format={"type": "json_schema", "json_schema": {"name": 5}}),
                400,
            ),
        ]
        name, payload, status = self.rng.choice(cases)
        if isinstance(payload, bytes):
            response = await self.http.post(
                "/v1/chat/completions", content=payload, headers={"content-type": "application/json"}
            )
        else:
            response = await self.http.post("/v1/chat/completions", json=payload)
        if response.status_code != status or not _is_openai_error(response):
            self.tally.bad(f"invalid/{name}", f"{response.status_code} {response.text}")
            return
        self.tally.counts["invalid"] += 1

    async def poison(self) -> None:
        """Input JSON allows but nothing downstream can keep: a 400 naming it, never a 500.
        (json.dumps writes a lone surrogate as its escape, and a NaN as NaN.)"""

        def schema(value: dict) -> dict:
            return {"type": "json_schema", "json_schema": {"name": "p", "schema": value}}

        deep_history = [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "x", "annotations": [_nested(100)]},
            {"role": "user", "content": "again"},
        ]
        cases: list[tuple[str, dict]] = [
            ("surrogate_content", self.body(messages=[{"role": "user", "content": "a\ud800b"}])),
            ("surrogate_model", self.body(model="m\udc00")),
            ("surrogate_metadata", self.body(store=True, metadata={"k": "\ud800"})),
            ("nan", self.body(response_format=schema({"type": "number", "maximum": float("nan")}))),
            ("deep", self.body(messages=deep_history, store=True)),
            ("logit_bias_key", self.body(logit_bias={"²": 1})),
            ("ref_cycle", self.body(response_format=schema(_ref_cycle()))),
            ("huge_repeat", self.body(response_format=schema({"type": "string", "pattern": "^a{1000000}$"}))),
            (
                "oversize_grammar",
                self.body(response_format=schema({"enum": [f"v{i:06d}" for i in range(20000)]})),
            ),
        ]
        name, body = self.rng.choice(cases)
        response = await self.http.post(
            "/v1/chat/completions",
            content=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
        )
        if response.status_code != 400 or not _is_openai_error(response):
            self.tally.bad(f"poison/{name}", f"{response.status_code} {response.text}")
            return
        self.tally.counts["poison"] += 1

    async def _raw_connection(
        self, rcvbuf: int | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        url = httpx.URL(str(self.http.base_url))
        sock = socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (url.host, url.port))
        return await asyncio.open_connection(sock=sock)

    async def slow_body(self) -> None:
        """A body sent a byte a second: answered 408 once body_timeout_s has passed."""
        reader, writer = await self._raw_connection()
        body = json.dumps(self.body()).encode()
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        try:
            for byte in body:
                writer.write(bytes([byte]))
                await writer.drain()
                try:
                    status = await asyncio.wait_for(reader.readline(), 1.0)
                except TimeoutError:
                    continue
                if not status.startswith(b"HTTP/1.1 408"):
                    self.tally.bad("slow_body", f"answered {status!r}")
                    return
                self.tally.counts["slow_body"] += 1
                return
            self.tally.bad("slow_body", "the whole body went out a byte a second without a 408")
        finally:
            writer.close()

    async def non_reader(self) -> None:
        """A stream whose client never reads: it must not hold the batch (checked by the others
        being served) and is given up after stalled_stream_timeout_s; the client leaves at some point."""
        _, writer = await self._raw_connection(rcvbuf=4096)
        body = json.dumps(self.body(stream=True, max_tokens=400, n=self.rng.choice([1, 4]))).encode()
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        await asyncio.sleep(self.rng.uniform(2, 15))
        writer.close()
        self.tally.counts["non_reader"] += 1

    async def long_prompt(self) -> None:
        body = self.body(max_tokens=8)
        body["messages"] = _prompt(self.rng, self.rng.randint(600, 1200))
        await self.valid("long_prompt", body, lambda data: None)

    async def over_context(self) -> None:
        body = self.body(max_tokens=8)
        body["messages"] = _prompt(self.rng, 12000)
        response = await self.http.post("/v1/chat/completions", json=body)
        code = response.json().get("error", {}).get("code") if _is_openai_error(response) else None
        if response.status_code != 400 or code not in ("context_length_exceeded", "request_too_large"):
            self.tally.bad("over_context", f"{response.status_code} {response.text}")
            return
        self.tally.counts["over_context"] += 1

    async def structured(self) -> None:
        schema = {
            "type": "object",
            "properties": {"word": {"type": "string", "maxLength": 12}, "n": {"type": "integer"}},
            "required": ["word", "n"],
            "additionalProperties": False,
        }
        body = self.body(
            max_tokens=40,
            messages=[{"role": "user", "content": "Answer in JSON with a word and a number."}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "w", "schema": schema, "strict": True},
            },
        )

        def check(data: dict) -> str | None:
            choice = data["choices"][0]
            if choice["finish_reason"] == "length":
                return None  # cut by max_tokens: not expected to parse
            parsed = json.loads(choice["message"]["content"])
            return None if set(parsed) == {"word", "n"} else f"schema broken: {parsed}"

        await self.valid("structured", body, check)

    async def stored(self) -> None:
        self.tally.valid_sent += 1
        response = await self.http.post(
            "/v1/chat/completions", json=self.body(store=True, metadata={"soak": "1"})
        )
        if response.status_code != 200:
            self.tally.bad("stored", f"{response.status_code} {response.text}")
            return
        completion_id = response.json()["id"]
        found = await self.http.get(f"/v1/chat/completions/{completion_id}")  # readable at once
        if found.status_code != 200:
            self.tally.bad(
                "stored", f"{completion_id} not readable right after its response: {found.status_code}"
            )
            return
        self.tally.valid_answered += 1
        self.tally.counts["stored"] += 1

    def scenarios(self) -> list[tuple[Callable[[], Awaitable[None]], int]]:
        return [
            (self.chat, 6),
            (self.stream, 6),
            (self.abandoned_stream, 2),
            (self.abandoned_request, 1),
            (self.invalid, 4),
            (self.poison, 3),
            (self.slow_body, 1),
            (self.non_reader, 1),
            (self.long_prompt, 1),
            (self.over_context, 1),
            (self.structured, 2),
            (self.stored, 1),
        ]


async def run_clients(url: str, model: str, clients: int, seconds: float, seed: int) -> Tally:
    tally = Tally()
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients * 2)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:

        async def loop(index: int) -> None:
            client = Client(http, model, random.Random(seed * 1000 + index), tally)
            work, weights = zip(*client.scenarios(), strict=True)
            while time.monotonic() < deadline:
                scenario = client.rng.choices(work, weights)[0]
                try:
                    await scenario()
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    tally.bad(scenario.__name__, f"{type(exc).__name__}: {exc}")

        await asyncio.gather(*(loop(i) for i in range(clients)))
    return tally


async def wait_idle(url: str, timeout: float = 120) -> dict[str, float]:
    """Waits until no sequence runs, waits or is parked; returns the engine gauges then."""
    end = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        while True:
            gauges = {}
            for line in (await http.get("/metrics")).text.splitlines():
                if line.startswith(
                    (
                        "openweights_running_sequences",
                        "openweights_waiting_sequences",
                        "openweights_parked_sequences",
                        "openweights_kv",
                    )
                ):
                    name, value = line.rsplit(" ", 1)
                    gauges[name] = float(value)
            busy = sum(v for k, v in gauges.items() if "running" in k or "waiting" in k or "parked" in k)
            if busy == 0 or time.monotonic() > end:
                return gauges
            await asyncio.sleep(0.5)


def _kv_bytes(gauges: dict[str, float]) -> float:
    return sum(v for k, v in gauges.items() if k.startswith("openweights_kv_cache_allocated_bytes"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an already running server (default: start one on the default model)")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--warmup-seconds", type=float, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "bench-results"))
    args = parser.parse_args()

    process = None
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    url = args.url
    if url is None:
        config = config_with_store(workdir, f"sqlite:///{workdir / 'store.sqlite3'}")
        config.write_text(config.read_text() + SERVER_SETTINGS)
        port, log = free_port(), workdir / "server.log"
        url = f"http://127.0.0.1:{port}"
        process = start_server(config, port, log)
        wait_healthy(process, url, log, timeout=600)
    rss = RssSampler(process.pid if process else None)
    try:
        print(f"warm-up: {args.clients} clients, {args.warmup_seconds:.0f} s", flush=True)
        warmup = asyncio.run(
            run_clients(url, args.model, args.clients, args.warmup_seconds, seed=args.seed + 1)
        )
        kv_before = _kv_bytes(asyncio.run(wait_idle(url)))
        time.sleep(2)
        baseline = rss.current()
        print(f"soak: {args.clients} clients, {args.seconds:.0f} s (baseline RSS {baseline} MB)", flush=True)
        started = time.monotonic()
        with rss:
            tally = asyncio.run(run_clients(url, args.model, args.clients, args.seconds, seed=args.seed))
        elapsed = time.monotonic() - started
        gauges = asyncio.run(wait_idle(url))
        time.sleep(2)
        final = rss.current()
        alive = process is None or process.poll() is None
    finally:
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(timeout=60)

    requests = sum(tally.counts.values())
    # The KV pool may have grown to hold a longer sequence (bounded by the configured budget, and
    # kept for the next one): that growth is reported apart and is not counted as a leak.
    kv_growth_mb = max(0.0, _kv_bytes(gauges) - kv_before) / 2**20
    allowed = (
        None if baseline is None else baseline * (1 + MEMORY_SLACK_RATIO) + MEMORY_SLACK_MB + kv_growth_mb
    )
    memory_ok = allowed is None or final is None or final <= allowed
    logged = (workdir / "server.log").read_text(errors="replace") if process is not None else ""
    tracebacks = logged.count("Traceback")
    result = {
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "requests": requests,
        "requests_per_s": round(requests / elapsed, 2),
        "by_scenario": dict(sorted(tally.counts.items())),
        "valid_sent": tally.valid_sent,
        "valid_answered": tally.valid_answered,
        "unexpected": tally.unexpected,
        "warmup_requests": sum(warmup.counts.values()),
        "warmup_unexpected": warmup.unexpected,
        "rss_baseline_mb": baseline,
        "rss_peak_mb": rss.peak or None,
        "rss_final_mb": final,
        "rss_allowed_mb": allowed,
        "kv_pool_growth_mb": round(kv_growth_mb, 1),
        "engine_after": gauges,
        "server_alive": alive,
        "server_tracebacks": tracebacks,
        "exit_code": process.returncode if process is not None else None,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    ok = (
        not tally.unexpected
        and not warmup.unexpected
        and tally.valid_sent == tally.valid_answered
        and memory_ok
        and alive
        and tracebacks == 0
        and (process is None or process.returncode == 0)
    )
    print(f"\n{'PASS' if ok else 'FAIL'}: results in {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
