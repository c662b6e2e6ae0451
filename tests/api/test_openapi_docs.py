"""/docs renders from assets the server ships (no CDN), and /openapi.json describes what each route
really answers: live responses validate against the document's schemas."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import pytest


@pytest.fixture(scope="module")
async def document(http: httpx.AsyncClient) -> dict[str, Any]:
    return (await http.get("/openapi.json")).json()


def check(
    document: dict[str, Any], path: str, method: str, status: int, body: Any, media: str = "application/json"
) -> None:
    schema = document["paths"][path][method]["responses"][str(status)]["content"][media]["schema"]
    jsonschema.validate(body, {**schema, "components": document["components"]})


async def test_docs_pages_load_their_assets_from_the_server(http: httpx.AsyncClient) -> None:
    for page in ("/docs", "/redoc"):
        html = (await http.get(page)).text
        assert "cdn." not in html and "/static-offline-docs/" in html
    asset = await http.get("/static-offline-docs/swagger-ui-bundle.js")
    assert asset.status_code == 200 and len(asset.content) > 100_000


async def test_live_responses_validate_against_the_document(
    http: httpx.AsyncClient, document: dict[str, Any]
) -> None:
    ask = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "store": True}
    completion = (await http.post("/v1/chat/completions", json=ask)).json()
    check(document, "/v1/chat/completions", "post", 200, completion)
    async with http.stream("POST", "/v1/chat/completions", json={**ask, "stream": True, "store": False}) as r:
        lines = [line async for line in r.aiter_lines() if line.startswith("data: {")]
    for line in lines:
        check(document, "/v1/chat/completions", "post", 200, json.loads(line[6:]), "text/event-stream")
    error = (await http.post("/v1/chat/completions", json={**ask, "temperature": 9})).json()
    check(document, "/v1/chat/completions", "post", 400, error)

    item = "/v1/chat/completions/{completion_id}"
    check(document, "/v1/chat/completions", "get", 200, (await http.get("/v1/chat/completions")).json())
    check(document, item, "get", 200, (await http.get(f"/v1/chat/completions/{completion['id']}")).json())
    messages = (await http.get(f"/v1/chat/completions/{completion['id']}/messages")).json()
    check(document, item + "/messages", "get", 200, messages)
    check(
        document, item, "delete", 200, (await http.delete(f"/v1/chat/completions/{completion['id']}")).json()
    )
    check(document, item, "get", 404, (await http.get(f"/v1/chat/completions/{completion['id']}")).json())
    check(document, "/v1/models", "get", 200, (await http.get("/v1/models")).json())
    check(document, "/v1/models/{model_id}", "get", 200, (await http.get("/v1/models/tiny")).json())


async def test_a_wrong_shape_does_not_validate(document: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        check(document, "/v1/chat/completions", "post", 200, {"id": "x", "object": "chat.completion"})
