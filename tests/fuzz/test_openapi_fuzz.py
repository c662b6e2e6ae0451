"""Fuzzing the whole HTTP surface from the server's own OpenAPI document (schemathesis), against a
real server process on the tiny random-weight model: valid and invalid requests for every
operation. The server must never answer 5xx, never hang, always answer errors in OpenAI's shape,
never log an unexpected exception, and keep serving valid requests in between.

`FUZZ_EXAMPLES` sets the examples per operation and mode (default 25: a few minutes here)."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

from tests.conftest import tiny_config_yaml
from tests.e2e.conftest import serving

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
# Generated requests stay cheap: short completions, few choices, one deadline for stragglers.
SERVER_SETTINGS = "  request_timeout_s: 20\n  limits: {max_n: 4, max_tokens: 16, max_body_bytes: 65536}\n"
CHAT = "POST /v1/chat/completions"
VALID = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}


@pytest.fixture(scope="module")
def fuzz_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    folder = tmp_path_factory.mktemp("fuzz")
    config = tiny_config_yaml(tiny_model_dir, folder, "    defaults: {max_tokens: 4}\n")
    config.write_text(config.read_text() + SERVER_SETTINGS)
    log = folder / "server.log"
    with serving(config, log) as (base, process):
        yield base, log
        assert process.poll() is None, "the server died during the fuzz run"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


def _check(response: object, method: str) -> str:
    status = response.status_code  # type: ignore[attr-defined]
    body: bytes = response.content  # type: ignore[attr-defined]
    assert status < 500, f"{status}: {body[:500]!r}"
    if status >= 400 and method != "HEAD":
        error = json.loads(body)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    elif "text/event-stream" in response.headers.get("content-type", ""):  # type: ignore[attr-defined]
        assert body.endswith(b"data: [DONE]\n\n"), body[-300:]
    return str(status)


def _still_serving(base: str) -> None:
    assert httpx.get(f"{base}/health", timeout=30).status_code == 200
    reply = httpx.post(f"{base}/v1/chat/completions", json=VALID, timeout=60)
    assert reply.status_code == 200 and reply.json()["choices"][0]["finish_reason"] in ("stop", "length")


def _fuzz(operation: schemathesis.APIOperation, mode: GenerationMode, statuses: Counter[str]) -> None:
    label = f"{operation.method.upper()} {operation.path}"

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        if mode is GenerationMode.POSITIVE and label == CHAT and isinstance(case.body, dict):
            case.body["model"] = "tiny"  # valid bodies should reach the model, not stop at its name
        response = case.call(timeout=60)  # a hang fails here
        statuses[f"{label} {_check(response, case.method)}"] += 1

    run()


def test_fuzz_the_http_api_from_its_openapi_document(fuzz_server: tuple[str, Path]) -> None:
    base, log = fuzz_server
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    statuses: Counter[str] = Counter()
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz(operation, mode, statuses)
            except Unsatisfiable:  # an operation without parameters has no invalid form
                assert mode is GenerationMode.NEGATIVE
            _still_serving(base)
    tried = sum(statuses.values())
    print(f"\nfuzz: {tried} requests over {operations} operations")
    for key, count in sorted(statuses.items()):
        print(f"  {count:5d}  {key}")
    if os.environ.get("FUZZ_REPORT"):
        Path(os.environ["FUZZ_REPORT"]).write_text(
            json.dumps({"requests": tried, "by_status": statuses}, indent=1)
        )
    assert operations >= 8 and len({key.rsplit(" ", 1)[0] for key in statuses}) == operations
    logged = log.read_text(errors="replace")
    assert "Traceback" not in logged and "unexpected error" not in logged, logged[-3000:]


def _places(value: object, path: tuple = ()) -> Iterator[tuple[tuple, str]]:
    """Every place a string can be poisoned: ("value", path) for a string, ("key", path) for a key."""
    if isinstance(value, str):
        yield path, "value"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield (*path, key), "key"
            yield from _places(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _places(item, (*path, index))


def _poisoned(body: dict, data: st.DataObject) -> dict:
    """The body with a lone surrogate put into one of its strings or keys, or one of its values
    nested 65 to 300 levels deep."""
    places = list(_places(body))
    if data.draw(st.booleans(), label="nest") or not places:
        where = data.draw(st.sampled_from([p for p, kind in places if kind == "key"] or [()]), label="where")
        depth = data.draw(st.integers(65, 300), label="depth")
        nested: object = "x"
        for _ in range(depth):
            nested = [nested]
        return _replace(body, where, nested) if where else {**body, "deep": nested}
    where, kind = data.draw(st.sampled_from(places), label="where")
    surrogate = data.draw(st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"]), label="surrogate")
    if kind == "key":
        parent = _get(body, where[:-1])
        renamed = {(k + surrogate if k == where[-1] else k): v for k, v in parent.items()}
        return _replace(body, where[:-1], renamed) if where[:-1] else renamed
    text = _get(body, where)
    at = data.draw(st.integers(0, len(text)), label="at")
    return _replace(body, where, text[:at] + surrogate + text[at:])


def _get(value: object, path: tuple) -> object:
    for step in path:
        value = value[step]  # type: ignore[index]
    return value


def _replace(value: object, path: tuple, new: object) -> object:
    if not path:
        return new
    copied = dict(value) if isinstance(value, dict) else list(value)  # type: ignore[call-overload]
    copied[path[0]] = _replace(copied[path[0]], path[1:], new)
    return copied


def test_fuzzed_bodies_with_a_lone_surrogate_or_deep_nesting_are_400(fuzz_server: tuple[str, Path]) -> None:
    """Valid chat bodies from the OpenAPI document, each poisoned in one place: always a 400 in
    OpenAI's shape, nothing of it stored, and every list of stored completions still readable."""
    base, log = fuzz_server
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    chat = next(
        r.ok() for r in schema.get_all_operations() if f"{r.ok().method.upper()} {r.ok().path}" == CHAT
    )
    sent = 0

    @settings(
        max_examples=EXAMPLES * 2, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(case=chat.as_strategy(generation_mode=GenerationMode.POSITIVE), data=st.data())
    def run(case: schemathesis.Case, data: st.DataObject) -> None:
        nonlocal sent
        if not isinstance(case.body, dict):
            return
        body = _poisoned({**case.body, "model": "tiny", "store": True}, data)
        raw = json.dumps(body).encode()  # a lone surrogate goes out as its escape, "\ud800"
        response = httpx.post(
            f"{base}/v1/chat/completions",
            content=raw,
            headers={"content-type": "application/json"},
            timeout=60,
        )
        assert response.status_code == 400, (response.status_code, response.text[:500], raw[:300])
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
        sent += 1

    run()
    assert sent >= EXAMPLES
    listed = httpx.get(f"{base}/v1/chat/completions", params={"limit": 100}, timeout=30)
    assert listed.status_code == 200 and listed.json()["object"] == "list"
    _still_serving(base)
    logged = log.read_text(errors="replace")
    assert "Traceback" not in logged and "unexpected error" not in logged, logged[-3000:]
