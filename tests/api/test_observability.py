"""GET /metrics, request ids and access logs."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.logs import JsonFormatter
from tests.api.conftest import running_app
from tests.conftest import tiny_config_yaml


@asynccontextmanager
async def _serving(config: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        running_app(config) as app,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        yield http


CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def _samples(http: httpx.AsyncClient) -> dict[tuple[str, frozenset], float]:
    response = await http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_count_requests_tokens_latencies_and_errors(http: httpx.AsyncClient) -> None:
    before = await _samples(http)
    assert (await http.post("/v1/chat/completions", json=CHAT)).status_code == 200
    async with http.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        assert response.status_code == 200
        await response.aread()
    assert (await http.post("/v1/chat/completions", json={**CHAT, "n": 0})).status_code == 400
    assert (await http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 9999})).status_code == 400
    assert (await http.post("/v1/chat/completions", json={**CHAT, "model": "nope"})).status_code == 404
    assert (await http.get("/v1/chat/completions/chatcmpl-missing")).status_code == 404
    after = await _samples(http)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    chat = dict(method="POST", route="/v1/chat/completions")

    def requests(status: str, model: str) -> float:
        return delta("openweights_http_requests_total", **chat, status=status, model=model)

    def errors(code: str) -> float:
        return delta("openweights_errors_total", type="invalid_request_error", code=code)

    assert requests("200", "tiny") == 2
    assert requests("400", "tiny") == 1  # over the context: the model is known
    assert requests("400", "") == 1  # refused while parsing
    assert requests("404", "") == 1  # no label for unknown ids
    assert errors("context_length_exceeded") == 1
    stored = dict(method="GET", route="/v1/chat/completions/{completion_id}", status="404", model="")
    assert delta("openweights_http_requests_total", **stored) == 1
    assert delta("openweights_errors_total", type="invalid_request_error", code="invalid_value") == 1
    assert delta("openweights_errors_total", type="invalid_request_error", code="model_not_found") == 1
    assert delta("openweights_errors_total", type="invalid_request_error", code="not_found") == 1
    assert delta("openweights_generation_tokens_total", model="tiny") == 8
    assert delta("openweights_prompt_tokens_total", model="tiny") > 0
    assert delta("openweights_time_to_first_token_seconds_count", model="tiny") == 2
    assert delta("openweights_inter_token_latency_seconds_count", model="tiny") == 6
    assert delta("openweights_choices_finished_total", model="tiny", reason="length") == 2
    assert delta("openweights_http_request_duration_seconds_count", **chat) == 5
    # Engine state, read when scraped.
    for gauge in (
        "running_sequences",
        "waiting_sequences",
        "kv_cache_used_tokens",
        "kv_cache_allocated_bytes",
    ):
        assert ("openweights_" + gauge, frozenset({"model": "tiny"}.items())) in after
    assert _value(after, "openweights_kv_cache_budget_tokens", model="tiny") > 0
    assert _value(after, "openweights_running_sequences", model="tiny") == 0


async def test_request_id_is_kept_or_made_and_echoed(http: httpx.AsyncClient) -> None:
    kept = await http.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "trace-42.a"})
    assert kept.headers["x-request-id"] == "trace-42.a"
    made = await http.get("/v1/models")
    assert len(made.headers["x-request-id"]) == 32
    odd = await http.get("/health", headers={"x-request-id": "has spaces\tand tabs"})
    assert odd.headers["x-request-id"] != "has spaces\tand tabs" and len(odd.headers["x-request-id"]) == 32
    refused = await http.post("/v1/chat/completions", content=b"{", headers={"x-request-id": "bad-body-1"})
    assert refused.status_code == 400 and refused.headers["x-request-id"] == "bad-body-1"


async def test_access_lines_carry_the_request_and_never_the_prompt(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    secret = f"secret-{uuid.uuid4().hex}"
    body = {**CHAT, "messages": [{"role": "user", "content": secret}]}
    with caplog.at_level(logging.DEBUG):
        response = await http.post(
            "/v1/chat/completions", json=body, headers={"x-request-id": "req-access-1"}
        )
    assert response.status_code == 200
    access = [r for r in caplog.records if r.name == "server.access"]
    assert len(access) == 1
    line = json.loads(JsonFormatter().format(access[0]))
    assert line["request_id"] == "req-access-1" and line["status"] == 200 and line["model"] == "tiny"
    assert line["route"] == "/v1/chat/completions" and line["duration_ms"] >= 0
    # Every line written while serving it carries the id; none holds the prompt or the output.
    served = [
        r
        for r in caplog.records
        if getattr(r, "request_id", None) == "req-access-1" or r.name == "server.access"
    ]
    assert any(r.name == "server.chat.service" for r in served)
    output = response.json()["choices"][0]["message"]["content"]
    for record in caplog.records:
        text = JsonFormatter().format(record)
        assert secret not in text and (not output.strip() or output not in record.getMessage())


async def test_log_content_is_a_debug_option(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tiny_config_yaml(tiny_model_dir, tmp_path)
    config.write_text(config.read_text() + "  log_content: true\n")
    secret = f"secret-{uuid.uuid4().hex}"
    async with _serving(config) as http:
        with caplog.at_level(logging.INFO):
            body = {**CHAT, "messages": [{"role": "user", "content": secret}]}
            assert (await http.post("/v1/chat/completions", json=body)).status_code == 200
    assert any(secret in r.getMessage() for r in caplog.records)


async def test_metrics_can_require_a_key(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OW_TEST_METRICS_KEYS", "sk-metrics-key-1=ops")
    config = tiny_config_yaml(tiny_model_dir, tmp_path)
    config.write_text(
        config.read_text() + "  api_keys_env: OW_TEST_METRICS_KEYS\n  metrics_require_key: true\n"
    )
    async with _serving(config) as http:
        refused = await http.get("/metrics")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        allowed = await http.get("/metrics", headers={"Authorization": "Bearer sk-metrics-key-1"})
        assert allowed.status_code == 200 and "openweights_http_requests_total" in allowed.text
