"""Stored completions through the official SDK, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest

from server.storage.records import StoredCompletion
from server.storage.sql_store import SqlCompletionStore
from tests.api.conftest import running_app
from tests.conftest import tiny_config_yaml

ASK = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def served(tiny_model_dir: Path, tmp_path: Path, store_url: str) -> AsyncIterator[tuple]:
    config = tiny_config_yaml(tiny_model_dir, tmp_path, store_url=store_url)
    async with running_app(config) as app, _client(app) as client:
        yield app, client, config


class _client:
    def __init__(self, app: object) -> None:
        self._http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=60
        )

    async def __aenter__(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url="http://t/v1", api_key="unused", http_client=self._http)

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()


async def _create(client: openai.AsyncOpenAI, tag: str, i: int = 0, **kwargs: object) -> str:
    r = await client.chat.completions.create(
        model="tiny", messages=ASK, max_tokens=3, store=True, metadata={"run": tag, "i": str(i)}, **kwargs
    )
    return r.id


async def test_stored_completion_is_the_response_plus_request_details(served: tuple) -> None:
    _, client, _ = served
    r = await client.chat.completions.create(
        model="tiny",
        messages=ASK,
        max_tokens=4,
        store=True,
        metadata={"team": "a"},
        seed=7,
        temperature=0.5,
        user="u-1",
        safety_identifier="sid-hash-1",
    )
    got = await client.chat.completions.retrieve(r.id)  # readable as soon as the response is complete
    assert got.choices[0].message.content == r.choices[0].message.content
    assert got.usage == r.usage and got.model == r.model and got.created == r.created
    assert got.system_fingerprint == r.system_fingerprint
    extra = got.model_dump()  # the stored fields beyond the response (some the SDK declares, some not)
    assert extra["metadata"] == {"team": "a"} and extra["seed"] == 7 and extra["temperature"] == 0.5
    assert extra["input_user"] == "u-1" and extra["safety_identifier"] == "sid-hash-1"


async def test_streamed_completions_are_stored_whole(served: tuple) -> None:
    _, client, _ = served
    stream = await client.chat.completions.create(
        model="tiny", messages=ASK, max_tokens=5, store=True, stream=True
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    got = await client.chat.completions.retrieve(chunks[0].id)
    assert got.choices[0].message.content == text and got.choices[0].finish_reason == "length"


async def test_store_false_leaves_no_trace(served: tuple) -> None:
    _, client, _ = served
    tag = uuid.uuid4().hex
    r = await client.chat.completions.create(model="tiny", messages=ASK, max_tokens=2, metadata={"run": tag})
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.retrieve(r.id)
    assert [c async for c in client.chat.completions.list(metadata={"run": tag})] == []


@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_auto_pagination_in_both_orders(served: tuple, order: str) -> None:
    _, client, _ = served
    tag = uuid.uuid4().hex
    created = [await _create(client, tag, i) for i in range(5)]
    listed = [c.id async for c in client.chat.completions.list(limit=2, order=order, metadata={"run": tag})]
    assert listed == (created if order == "asc" else created[::-1])
    page = await client.chat.completions.list(limit=2, order=order, metadata={"run": tag})
    assert page.has_more and page.first_id == listed[0] and page.last_id == listed[1]


async def test_filters_by_metadata_and_model(served: tuple) -> None:
    _, client, _ = served
    tag = uuid.uuid4().hex
    ids = [await _create(client, tag, i) for i in range(3)]
    only = [c.id async for c in client.chat.completions.list(metadata={"run": tag, "i": "1"})]
    assert only == [ids[1]]
    assert [c.id async for c in client.chat.completions.list(model="tiny", metadata={"run": tag})] == ids
    assert [c.id async for c in client.chat.completions.list(model="nope", metadata={"run": tag})] == []


async def test_messages_are_listed_with_ids_and_content_parts(served: tuple) -> None:
    _, client, _ = served
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
    ]
    r = await client.chat.completions.create(model="tiny", messages=messages, max_tokens=2, store=True)
    listed = [m async for m in client.chat.completions.messages.list(r.id, limit=1)]
    assert [m.id for m in listed] == [f"{r.id}-0", f"{r.id}-1"]
    assert listed[0].content == "Be brief." and listed[0].content_parts is None
    assert listed[1].content == "one\ntwo" and [p.text for p in listed[1].content_parts] == ["one", "two"]
    backwards = await client.chat.completions.messages.list(r.id, order="desc")
    assert [m.id for m in backwards.data] == [f"{r.id}-1", f"{r.id}-0"]


async def test_update_replaces_metadata_and_delete_removes(served: tuple) -> None:
    _, client, _ = served
    completion_id = await _create(client, uuid.uuid4().hex)
    updated = await client.chat.completions.update(completion_id, metadata={"stage": "reviewed"})
    assert updated.model_dump()["metadata"] == {"stage": "reviewed"}
    got = await client.chat.completions.retrieve(completion_id)
    assert got.model_dump()["metadata"] == {"stage": "reviewed"}
    with pytest.raises(openai.BadRequestError) as too_many:
        await client.chat.completions.update(completion_id, metadata={f"k{i}": "v" for i in range(17)})
    assert too_many.value.body["param"] == "metadata"
    # `null` clears the metadata, as `{}` does (README: Stored completions); it is never ignored.
    cleared = await client.chat.completions.update(completion_id, metadata=None)
    assert cleared.model_dump()["metadata"] == {}
    got = await client.chat.completions.retrieve(completion_id)
    assert got.model_dump()["metadata"] == {}
    await client.chat.completions.update(completion_id, metadata={"stage": "reviewed"})
    deleted = await client.chat.completions.delete(completion_id)
    assert deleted.deleted and deleted.id == completion_id and deleted.object == "chat.completion.deleted"
    for call in (
        client.chat.completions.retrieve(completion_id),
        client.chat.completions.delete(completion_id),
        client.chat.completions.update(completion_id, metadata={}),
        client.chat.completions.messages.list(completion_id),
    ):
        with pytest.raises(openai.NotFoundError):
            await call


@pytest.mark.parametrize(
    ("query", "param"),
    [("limit=0", "limit"), ("limit=101", "limit"), ("limit=x", "limit"), ("order=up", "order")],
)
async def test_bad_list_queries_are_400(served: tuple, query: str, param: str) -> None:
    app, _, _ = served
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        r = await http.get(f"/v1/chat/completions?{query}")
    assert r.status_code == 400 and r.json()["error"]["param"] == param


async def test_stored_completions_survive_a_restart(
    tiny_model_dir: Path, tmp_path: Path, store_url: str
) -> None:
    config = tiny_config_yaml(tiny_model_dir, tmp_path, store_url=store_url)
    async with running_app(config) as app, _client(app) as client:
        r = await client.chat.completions.create(model="tiny", messages=ASK, max_tokens=2, store=True)
    # shutdown writes what is queued; a new server on the same database finds it
    async with running_app(config) as app, _client(app) as client:
        got = await client.chat.completions.retrieve(r.id)
        assert got.id == r.id


class _BrokenStore(SqlCompletionStore):
    def save(self, record: StoredCompletion) -> None:
        raise OSError("disk full")


async def test_a_failing_store_fails_the_response_instead_of_a_200_that_is_not_stored(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    config = tiny_config_yaml(tiny_model_dir, tmp_path)
    store = _BrokenStore(f"sqlite:///{tmp_path / 'broken.sqlite3'}")
    async with running_app(config, store=store) as app, _client(app) as client:
        with pytest.raises(openai.InternalServerError) as failed:
            await client.with_options(max_retries=0).chat.completions.create(
                model="tiny", messages=ASK, max_tokens=2, store=True
            )
        assert failed.value.body["code"] == "store_failed" and "not stored" in failed.value.body["message"]
        stream = await client.chat.completions.create(
            model="tiny", messages=ASK, max_tokens=2, store=True, stream=True
        )
        with pytest.raises(openai.APIError, match="not stored"):  # the stream ends with an error event
            _ = [chunk async for chunk in stream]
        # Without `store` nothing touches the store, and the server goes on serving.
        r = await client.chat.completions.create(model="tiny", messages=ASK, max_tokens=2)
        assert r.choices[0].message.content is not None
        writer = app.state.store_writer
        assert writer.failed == 2 and writer.written == 0
        # ... and the failures show where operators look.
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            scraped = (await http.get("/metrics")).text
        assert 'openweights_store_writes_total{result="failed"} 2.0' in scraped
        assert 'openweights_store_writes_total{result="written"} 0.0' in scraped
        assert "openweights_store_pending 0.0" in scraped
        assert 'openweights_errors_total{code="store_failed",type="server_error"} 2.0' in scraped


async def _create_then_read(client: openai.AsyncOpenAI, i: int) -> bool:
    """Creates a stored completion (every other one streamed) and reads it back at once: found?"""
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": f"n{i}"}],
        "max_tokens": 2,
        "store": True,
    }
    if i % 2:
        chunks = [c async for c in await client.chat.completions.create(**body, stream=True)]
        completion_id = chunks[0].id
    else:
        completion_id = (await client.chat.completions.create(**body)).id
    try:
        await client.chat.completions.retrieve(completion_id)
    except openai.NotFoundError:
        return False
    return True


async def _stream_until(client: openai.AsyncOpenAI, done: asyncio.Event) -> int:
    streams = 0
    while not done.is_set():
        stream = await client.chat.completions.create(
            model="tiny", messages=ASK, max_tokens=40, stream=True, store=bool(streams % 2)
        )
        _ = [c async for c in stream]
        streams += 1
    return streams


@pytest.mark.parametrize("load", ["idle", "beside 8 streams"])
async def test_a_completion_is_readable_as_soon_as_its_response_is_complete(served: tuple, load: str) -> None:
    """Read-your-writes: 200 creates, each read straight back, no miss (the SDK's create-then-retrieve)."""
    _, client, _ = served
    done = asyncio.Event()
    streams = [asyncio.create_task(_stream_until(client, done)) for _ in range(8 if load != "idle" else 0)]
    try:
        found = [await _create_then_read(client, i) for i in range(200)]
    finally:
        done.set()
        served_streams = await asyncio.gather(*streams)
    assert found.count(False) == 0, f"{found.count(False)} of 200 reads missed"
    assert load == "idle" or min(served_streams) >= 1
