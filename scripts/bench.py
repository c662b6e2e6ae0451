"""Throughput and latency of our server against two yardsticks, on the same model and prompts.

    .venv/bin/python scripts/bench.py                          # ours + both yardsticks, levels 1, 4, 16
    .venv/bin/python scripts/bench.py --url http://127.0.0.1:8000 --model smollm2-135m-instruct
    .venv/bin/python scripts/bench.py --targets ours --levels 1,16
    .venv/bin/python scripts/bench.py --targets ours --levels 1,16 \
        --workloads plain,json_schema,tool_prompt,tool_call   # constrained vs. the same requests, free

Per concurrency level: streaming requests from a fixed, varied prompt set (temperature 0,
--tokens output tokens, loopback only; no prompt repeats within a level), each worker sending its
next request when the last one ends, bounded by --requests-per-stream and --level-seconds.

Arrivals (--start): `staggered` (default) starts the workers one after another, each once the
previous worker's first response has streamed tokens/concurrency tokens, so that requests arrive
spread over time as they do from independent clients, at the pace of the server under test;
`together` starts them all at the same instant (a synchronized burst: every request's prompt is
read at once, so TTFT measures the burst's total prefill). Aggregate tokens/s is counted in the
steady window, from the moment every worker is streaming to the moment the first one runs out of
requests (ramp-up and drain excluded); the overall rate (all tokens / level time) is kept too.

Reported: TTFT p50/p95, inter-token latency p50, aggregate output tokens/s, errors, peak RSS of
the server process. Yardsticks: (a) `reference`: scripts/reference_server.py, one generate() +
TextIteratorStreamer per request; (b) `transformers`: `transformers serve --continuous-batching` on
the default model converted to a plain checkpoint; (c) `llama`: llama.cpp's `llama-server` on the
default model's own GGUF file, one slot per stream of the highest level, every core (built once by
scripts/llama_server.py, about 10 minutes). Writes a JSON file and prints a table with
our/yardstick ratios (only ratios from one run mean anything here).

    .venv/bin/python scripts/bench.py --targets ours,llama --levels 1,16 --tokens 128
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from server.chat.tools import builtin_tool_prompt  # noqa: E402
from server.parsers.events import ToolSpec  # noqa: E402
from server.parsers.hermes import HermesParser  # noqa: E402
from tests.e2e.conftest import free_port, wait_healthy  # noqa: E402

PROMPTS = [
    "Write a detailed essay about the history of the printing press.",
    "Explain how a refrigerator works, step by step, for a curious child.",
    "Tell a long story about a lighthouse keeper who finds a message in a bottle.",
    "Describe the water cycle in depth, including evaporation, condensation and precipitation.",
    "Write a travel guide for a week in Kyoto, day by day.",
    "Explain the rules of chess and some opening strategies.",
    "Write a letter to a friend describing your ideal garden in detail.",
    "Summarize the main causes of the French Revolution and their consequences.",
    "Give a beginner's tutorial on baking sourdough bread.",
    "Describe the life cycle of a star from nebula to remnant.",
    "Write a product review of an imaginary electric bicycle, covering pros and cons.",
    "Explain how the internet routes a message from one computer to another.",
    "Write a short play in which two robots argue about poetry.",
    "Describe the ecosystem of a coral reef and the threats it faces.",
    "Explain the difference between weather and climate with many examples.",
    "Write a motivational speech for a team before a big match.",
]
# No prompt is sent twice to a server in one run (a repeat would be answered from the prefix cache,
# which flatters whichever level sees it): request k of a run asks PROMPTS[k % 16] in a style of its own.
STYLES = ["", "For a newspaper column: ", "In plain words for a beginner: ", "As an expert, in depth: "]


def prompt_for(k: int) -> str:
    text = STYLES[(k // len(PROMPTS)) % len(STYLES)] + PROMPTS[k % len(PROMPTS)]
    take = k // (len(PROMPTS) * len(STYLES))
    return f"Take {take + 1}. {text}" if take else text


# Constrained workloads (ours only), compared with the same requests unconstrained ("plain"). Their
# schemas ask for long text, so that a constrained request generates as many tokens as a plain one.
LONG_TEXT = {"type": "string", "minLength": 2000, "maxLength": 4000}
ESSAY = {
    "type": "object",
    "properties": {"title": {"type": "string", "maxLength": 60}, "body": LONG_TEXT},
    "required": ["title", "body"],
    "additionalProperties": False,
}
ESSAY_TOOL = ToolSpec("write_essay", ESSAY)
WORKLOADS: dict[str, dict] = {
    "plain": {},
    "json_schema": {
        "response_format": {"type": "json_schema", "json_schema": {"name": "essay", "schema": ESSAY}}
    },
    "tool_call": {
        "tools": [{"type": "function", "function": {"name": "write_essay", "parameters": ESSAY}}],
        "tool_choice": {"type": "function", "function": {"name": "write_essay"}},
    },
    # tool_call's unconstrained twin: the same prompt (the default model's template has no tool
    # support, so the server shows tools through this very system prompt), no grammar.
    "tool_prompt": {"system": builtin_tool_prompt((ESSAY_TOOL,), HermesParser.call_instructions)},
}
# Each constrained workload and the plain workload it is compared with.
TWINS = {"json_schema": "plain", "tool_call": "tool_prompt"}


@dataclass
class RequestResult:
    started: float = 0.0  # time.perf_counter()
    ended: float = 0.0
    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)
    chunk_times: list[float] = field(default_factory=list)  # arrival of each content chunk
    tokens: int = 0
    error: str | None = None

    def tokens_between(self, start: float, end: float) -> float:
        """Output tokens that arrived in [start, end] (a chunk may carry several tokens)."""
        if not self.chunk_times:
            return 0.0
        per_chunk = self.tokens / len(self.chunk_times)
        return per_chunk * sum(1 for t in self.chunk_times if start <= t <= end)


@dataclass
class StreamRun:
    """What one worker (one concurrent stream) did during a level."""

    results: list[RequestResult] = field(default_factory=list)

    @property
    def first_start(self) -> float:
        return self.results[0].started

    @property
    def last_end(self) -> float:
        return self.results[-1].ended


@dataclass
class LevelResult:
    target: str
    workload: str
    concurrency: int
    requests: int
    errors: int
    output_tokens: int
    error_messages: list[str]  # the first few, as the client saw them
    seconds: float
    tokens_per_s: float  # in the steady window when it exists, else overall
    overall_tokens_per_s: float
    steady_window_s: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    itl_p50_ms: float | None
    peak_rss_mb: float | None
    rss_after_mb: float | None


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between the closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class RssSampler:
    """Peak resident memory of a process (and its children) while a level runs."""

    def __init__(self, pid: int | None) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()

    def current(self) -> float | None:
        if self.pid is None:
            return None
        total = 0
        for pid in [self.pid, *_children(self.pid)]:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total / 1024

    def __enter__(self) -> RssSampler:
        def run() -> None:
            while not self._stop.wait(0.2):
                self.peak = max(self.peak, self.current() or 0.0)

        self.peak = self.current() or 0.0
        threading.Thread(target=run, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


def _children(pid: int) -> list[int]:
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [int(p) for p in out.split()]


async def one_request(
    client: httpx.AsyncClient,
    url: str,
    model: str,
    prompt: str,
    tokens: int,
    workload: str = "plain",
    progress: asyncio.Event | None = None,
    progress_after: int = 1,
) -> RequestResult:
    """One streamed request; `progress` is set once `progress_after` content chunks have arrived (or
    the request has ended, whatever happened). Sent again once if a kept-alive connection turned
    out closed before any response (llama-server closes idle ones; a stale pooled connection is the
    client's concern, not the server's)."""
    extra = dict(WORKLOADS[workload])
    system = extra.pop("system", None)
    body = {
        **extra,
        "model": model,
        "messages": ([{"role": "system", "content": system}] if system else [])
        + [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    result = await _stream(client, url, body, progress, progress_after)
    if result.error and result.error.startswith("RemoteProtocolError") and not result.chunk_times:
        result = await _stream(client, url, body, progress, progress_after)
    return result


async def _stream(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, object],
    progress: asyncio.Event | None,
    progress_after: int,
) -> RequestResult:
    result = RequestResult()
    started = last = result.started = time.perf_counter()
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                result.error = f"HTTP {r.status_code}"
                await r.aread()
                return result
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    result.error = str(chunk["error"])[:200]
                if chunk.get("usage"):
                    result.tokens = chunk["usage"].get("completion_tokens", 0)
                choices = chunk.get("choices") or []
                delta = choices[0].get("delta", {}) if choices else {}
                if delta.get("content") or delta.get("tool_calls"):
                    now = time.perf_counter()
                    if result.ttft is None:
                        result.ttft = now - started
                    else:
                        result.gaps.append(now - last)
                    last = now
                    result.chunk_times.append(now)
                    if progress is not None and len(result.chunk_times) >= progress_after:
                        progress.set()
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        result.ended = time.perf_counter()
        if progress is not None:
            progress.set()
    if not result.tokens:
        result.tokens = len(result.chunk_times)  # a server without usage: one content chunk per token
    return result


def rounds_for(concurrency: int, args: argparse.Namespace) -> int:
    """Requests per stream at this level: at least --min-requests in all."""
    return max(args.requests_per_stream, -(-args.min_requests // concurrency))


async def run_level(
    url: str,
    model: str,
    concurrency: int,
    args: argparse.Namespace,
    first_prompt: int,
    rounds: int,
    workload: str = "plain",
) -> list[StreamRun]:
    """Requests use prompts first_prompt .. first_prompt + concurrency * rounds - 1."""
    deadline = time.monotonic() + args.level_seconds
    streams = [StreamRun() for _ in range(concurrency)]
    # Worker i starts when worker i-1's first response has streamed its share of the tokens.
    gates = [asyncio.Event() for _ in range(concurrency)]
    share = max(1, args.tokens // concurrency)
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=30), limits=limits) as client:

        async def worker(index: int) -> None:
            if args.start == "staggered" and index > 0:
                await gates[index - 1].wait()
            try:
                for round_ in range(rounds):
                    if time.monotonic() > deadline:
                        return
                    prompt = prompt_for(first_prompt + index * rounds + round_)
                    gate = gates[index] if round_ == 0 else None
                    result = await one_request(client, url, model, prompt, args.tokens, workload, gate, share)
                    streams[index].results.append(result)
            finally:
                gates[index].set()

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return [s for s in streams if s.results]


def steady_window(streams: list[StreamRun]) -> tuple[float, float] | None:
    """From the moment every stream is running to the moment the first one has no more requests."""
    if not streams:
        return None
    start, end = max(s.first_start for s in streams), min(s.last_end for s in streams)
    return (start, end) if end - start >= 1.0 else None


def summarize(
    target: str,
    workload: str,
    concurrency: int,
    streams: list[StreamRun],
    seconds: float,
    peak: float | None,
    after: float | None,
) -> LevelResult:
    results = [r for s in streams for r in s.results]
    ok = [r for r in results if r.error is None]
    tokens = sum(r.tokens for r in ok)
    overall = round(tokens / seconds, 2) if seconds else 0.0
    window = steady_window(streams)
    steady = None
    if window is not None:
        steady = round(sum(r.tokens_between(*window) for r in ok) / (window[1] - window[0]), 2)
    ttfts = [r.ttft * 1000 for r in ok if r.ttft is not None]
    gaps = [g * 1000 for r in ok for g in r.gaps]
    return LevelResult(
        target=target,
        workload=workload,
        concurrency=concurrency,
        requests=len(results),
        errors=len(results) - len(ok),
        output_tokens=tokens,
        error_messages=[r.error for r in results if r.error is not None][:3],
        seconds=round(seconds, 2),
        tokens_per_s=overall if steady is None else steady,
        overall_tokens_per_s=overall,
        steady_window_s=None if window is None else round(window[1] - window[0], 1),
        ttft_p50_ms=percentile(ttfts, 0.5),
        ttft_p95_ms=percentile(ttfts, 0.95),
        itl_p50_ms=percentile(gaps, 0.5),
        peak_rss_mb=round(peak, 1) if peak else None,
        rss_after_mb=round(after, 1) if after else None,
    )


def start(command: list[str], url: str, log: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    wait_healthy(process, url, log, timeout=600)
    return process


def converted_checkpoint() -> str:
    from server.config import load_config
    from server.models.loader import converted_gguf, resolve_source

    config = load_config(REPO / "models.yaml")
    spec = config.models[0]
    return converted_gguf(spec, resolve_source(spec, REPO), config.server)


def default_gguf() -> Path:
    """The default model's GGUF file, as models.yaml names it."""
    from server.config import load_config
    from server.models.loader import resolve_source

    spec = load_config(REPO / "models.yaml").models[0]
    source = resolve_source(spec, REPO)
    assert source.gguf_file, "the first model of models.yaml is not a GGUF file"
    return Path(source.location) / source.gguf_file


def llama_command(args: argparse.Namespace, port: int) -> list[str]:
    from scripts.llama_server import build

    slots = max(int(c) for c in args.levels.split(","))
    per_slot = 1024  # a prompt of the set and --tokens of output fit with room to spare
    return [
        str(build()),
        "--model",
        str(default_gguf()),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--parallel",
        str(slots),
        "--ctx-size",
        str(slots * max(per_slot, 2 * args.tokens + 256)),
        "--threads",
        str(os.cpu_count() or 2),
        "--no-webui",
    ]


def targets(args: argparse.Namespace, workdir: Path) -> list[tuple[str, list[str] | None, str, str]]:
    """(name, command or None for --url, base url, model name)."""
    chosen = args.targets.split(",")
    out = []
    if "ours" in chosen:
        if args.url:
            out.append(("ours", None, args.url.rstrip("/"), args.model))
        else:
            port = free_port()
            command = [
                sys.executable,
                "-m",
                "server",
                "serve",
                "--config",
                args.config,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ]
            out.append(("ours", command, f"http://127.0.0.1:{port}", args.model))
    checkpoint = converted_checkpoint() if {"reference", "transformers"} & set(chosen) else ""
    if "reference" in chosen:
        port = free_port()
        command = [
            sys.executable,
            str(REPO / "scripts" / "reference_server.py"),
            checkpoint,
            "--port",
            str(port),
            "--device",
            args.device,
            "--dtype",
            args.dtype,
        ]
        out.append(("reference", command, f"http://127.0.0.1:{port}", "ref"))
    if "transformers" in chosen:
        port = free_port()
        command = [
            str(Path(sys.executable).parent / "transformers"),
            "serve",
            "--continuous-batching",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--device",
            args.device,
            "--dtype",
            args.dtype,
            checkpoint,
        ]
        out.append(("transformers-serve-cb", command, f"http://127.0.0.1:{port}", checkpoint))
    if "llama" in chosen:
        port = free_port()
        out.append(("llama-server", llama_command(args, port), f"http://127.0.0.1:{port}", args.model))
    return out


def print_table(levels: list[LevelResult]) -> None:
    def fmt(v: float | None, digits: int = 0) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    header = (
        f"{'target':22} {'workload':11} {'conc':>4} {'reqs':>4} {'err':>3} {'tok/s':>7} {'window s':>8} "
        f"{'TTFT p50':>8} {'TTFT p95':>8} {'ITL p50':>7} {'peak RSS':>8} {'RSS after':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in levels:
        print(
            f"{r.target:22} {r.workload:11} {r.concurrency:>4} {r.requests:>4} {r.errors:>3} "
            f"{r.tokens_per_s:>7.1f} {fmt(r.steady_window_s, 1):>8} {fmt(r.ttft_p50_ms):>8} "
            f"{fmt(r.ttft_p95_ms):>8} {fmt(r.itl_p50_ms, 1):>7} {fmt(r.peak_rss_mb):>8} "
            f"{fmt(r.rss_after_mb):>9}"
        )


def ratios(levels: list[LevelResult]) -> dict[str, float]:
    every = {(r.target, r.workload, r.concurrency): r for r in levels}
    by = {(t, c): r for (t, w, c), r in every.items() if w == "plain"}
    out: dict[str, float] = {}
    for (target, workload, c), r in every.items():
        twin = every.get((target, TWINS.get(workload, ""), c))
        if twin is not None and twin.tokens_per_s:
            pair = f"{target} {workload}/{twin.workload}"
            out[f"{pair} tok/s at {c}"] = round(r.tokens_per_s / twin.tokens_per_s, 3)
            if r.itl_p50_ms and twin.itl_p50_ms:  # per-token cost alone, whatever the output lengths
                out[f"{pair} ITL p50 at {c}"] = round(r.itl_p50_ms / twin.itl_p50_ms, 3)
    for (target, c), r in by.items():
        ours = by.get(("ours", c))
        if target != "ours" and ours and r.tokens_per_s:
            out[f"ours/{target} tok/s at {c}"] = round(ours.tokens_per_s / r.tokens_per_s, 2)
    cs = sorted(c for t, c in by if t == "ours")
    if len(cs) > 1:
        low, high = by[("ours", cs[0])], by[("ours", cs[-1])]
        if low.tokens_per_s:
            out[f"ours tok/s at {cs[-1]} / at {cs[0]}"] = round(high.tokens_per_s / low.tokens_per_s, 2)
        if low.ttft_p50_ms and high.ttft_p50_ms:
            out[f"ours TTFT p50 at {cs[-1]} / at {cs[0]}"] = round(high.ttft_p50_ms / low.ttft_p50_ms, 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="benchmark this running server as 'ours' instead of starting one")
    parser.add_argument("--config", default=str(REPO / "models.yaml"))
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--targets", default="ours,reference,transformers")
    parser.add_argument("--levels", default="1,4,16")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--requests-per-stream", type=int, default=2)
    parser.add_argument("--min-requests", type=int, default=4, help="per level (more rounds at low levels)")
    parser.add_argument("--level-seconds", type=float, default=240, help="no new request starts after this")
    parser.add_argument(
        "--start",
        choices=["staggered", "together"],
        default="staggered",
        help="staggered: the streams start one after another; together: all at once (a burst)",
    )
    parser.add_argument("--device", default="cpu", help="device of both yardsticks (ours: models.yaml)")
    parser.add_argument("--dtype", default="float32", help="dtype of both yardsticks (ours: models.yaml)")
    parser.add_argument(
        "--workloads",
        default="plain",
        help=f"for ours, comma-separated from {','.join(WORKLOADS)}: constrained vs. the same plain requests",
    )
    parser.add_argument("--out", default=str(REPO / "bench-results"))
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    levels: list[LevelResult] = []
    for name, command, url, model in targets(args, workdir):
        process = start(command, url, workdir / f"{name}.log") if command else None
        rss = RssSampler(process.pid if process else None)
        try:
            asyncio.run(run_level(url, model, 1, args, first_prompt=0, rounds=1))
            used = 1  # prompts sent so far
            baseline = rss.current()
            print(f"{name}: warmed up, RSS {baseline or 0:.0f} MB", flush=True)
            workloads = args.workloads.split(",") if name == "ours" else ["plain"]
            for concurrency in [int(c) for c in args.levels.split(",")]:
                for workload in workloads:  # interleaved, so constrained and plain see the same machine
                    with rss:
                        started = time.perf_counter()
                        rounds = rounds_for(concurrency, args)
                        run = run_level(url, model, concurrency, args, used, rounds, workload)
                        used += concurrency * rounds
                        streams = asyncio.run(run)
                        seconds = time.perf_counter() - started
                    time.sleep(1.0)
                    level = summarize(
                        name, workload, concurrency, streams, seconds, rss.peak or None, rss.current()
                    )
                    levels.append(level)
                    print(
                        f"  {name} {workload} c={concurrency}: {level.tokens_per_s:.1f} tok/s, "
                        f"{level.errors} errors {level.error_messages or ''}",
                        flush=True,
                    )
        finally:
            if process is not None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
    print()
    print_table(levels)
    summary = ratios(levels)
    for key, value in summary.items():
        print(f"{key}: {value}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(
        json.dumps({"levels": [asdict(x) for x in levels], "ratios": summary, "args": vars(args)}, indent=2)
    )
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
