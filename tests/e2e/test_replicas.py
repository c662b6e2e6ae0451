"""Two replicas behind nginx sharing PostgreSQL (scripts/replicas.sh): what one stores the other
reads, lists and deletes; streams pass nginx unbuffered; routing by prompt_cache_key keeps a
conversation on the replica that holds its KV, so more of its prompt is cached than round robin."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.e2e.conftest import MODEL, REPO

NEEDS = [shutil.which("nginx"), Path("/usr/lib/nginx/modules/ngx_http_js_module.so").exists()]
if not all(NEEDS) and not os.environ.get("CI"):
    pytest.skip(
        "nginx with its js module is not installed (Debian: nginx libnginx-mod-http-js)",
        allow_module_level=True,
    )

SYSTEM = "You are a careful assistant who answers in one short sentence. " * 6


def _free_base() -> int:
    """A base port whose ten ports are free."""
    for base in range(18400, 19400, 10):
        try:
            for port in range(base, base + 10):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free ports for the replicas")


@pytest.fixture(scope="module")
def ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    folder = tmp_path_factory.mktemp("replicas")
    script = [str(REPO / "scripts" / "replicas.sh")]
    started = subprocess.run(
        ["bash", *script, "start", str(folder), str(_free_base())],
        capture_output=True,
        text=True,
        timeout=600,
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        entries = (folder / "ports.env").read_text().split()
        yield dict(entry.split("=", 1) for entry in entries)
    finally:
        subprocess.run(["bash", *script, "stop", str(folder)], capture_output=True, timeout=120)


def client(port: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)


def test_what_one_replica_stores_the_other_reads_lists_and_deletes(ports: dict[str, str]) -> None:
    one, other = client(ports["REPLICA_1"]), client(ports["REPLICA_2"])
    tag = f"replicas-{time.time_ns()}"
    stored = one.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=4,
        store=True,
        metadata={"run": tag},
    )
    assert other.chat.completions.retrieve(stored.id).id == stored.id
    listed = other.chat.completions.list(metadata={"run": tag})
    assert [c.id for c in listed.data] == [stored.id]
    assert [m.content for m in other.chat.completions.messages.list(stored.id).data] == ["Say hi."]
    assert other.chat.completions.delete(stored.id).deleted
    with pytest.raises(openai.NotFoundError):
        one.chat.completions.retrieve(stored.id)


def test_a_stream_through_nginx_arrives_as_it_is_generated(ports: dict[str, str]) -> None:
    ask = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count from one to fifty."}],
        "stream": True,
        "temperature": 0,
    }
    for port in (ports["NGINX_BY_KEY"], ports["NGINX_ROUND_ROBIN"]):
        started = time.perf_counter()
        arrivals = [
            time.perf_counter() - started for _ in client(port).chat.completions.create(**ask, max_tokens=120)
        ]
        # Buffered, every chunk would arrive at the end; here the first arrives long before it.
        assert len(arrivals) > 50 and arrivals[1] < arrivals[-1] / 2, (port, arrivals[1], arrivals[-1])


def cached_share(port: str, conversations: int = 6, turns: int = 3) -> float:
    """Of the prompt tokens of a multi-turn workload (each conversation its own cache key), the
    share whose KV was reused."""
    api = client(port)
    prompt = cached = 0
    for index in range(conversations):
        messages = [{"role": "system", "content": f"Conversation {index} of port {port}. {SYSTEM}"}]
        for turn in range(turns):
            messages.append({"role": "user", "content": f"Question {turn}: name a colour."})
            answer = api.chat.completions.create(
                model=MODEL,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=6,
                temperature=0,
                prompt_cache_key=f"conversation-{port}-{index}",
            )
            messages.append({"role": "assistant", "content": answer.choices[0].message.content or ""})
            assert answer.usage is not None and answer.usage.prompt_tokens_details is not None
            prompt += answer.usage.prompt_tokens
            cached += answer.usage.prompt_tokens_details.cached_tokens or 0
    return cached / prompt


def test_routing_by_prompt_cache_key_reuses_more_kv_than_round_robin(ports: dict[str, str]) -> None:
    by_key = cached_share(ports["NGINX_BY_KEY"])
    round_robin = cached_share(ports["NGINX_ROUND_ROBIN"])
    print(f"cached share of prompt tokens: by prompt_cache_key {by_key:.1%}, round robin {round_robin:.1%}")
    assert by_key > round_robin
