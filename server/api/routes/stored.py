"""The stored-completion endpoints: list, retrieve, messages, update metadata, delete."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from openai.types.chat import ChatCompletion, ChatCompletionDeleted
from pydantic import ValidationError

from server.api import openapi
from server.chat.recording import stored_messages, stored_object
from server.protocol.errors import InvalidRequest, NotFound, printable
from server.protocol.stored import MetadataUpdate
from server.storage.records import CompletionStore, ListQuery, StoredCompletion

router = APIRouter()
MAX_LIMIT = 100

# The query parameters are read by hand (for OpenAI's error messages); they are declared here so
# that the OpenAPI document describes them.
_PAGE_PARAMETERS = [
    {
        "name": "after",
        "in": "query",
        "schema": {"type": "string"},
        "description": "the last id of the previous page",
    },
    {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 20},
    },
    {"name": "order", "in": "query", "schema": {"type": "string", "enum": ["asc", "desc"], "default": "asc"}},
]
_LIST_PARAMETERS = [
    *_PAGE_PARAMETERS,
    {"name": "model", "in": "query", "schema": {"type": "string"}},
    {
        "name": "metadata",
        "in": "query",
        "style": "deepObject",
        "explode": True,
        "schema": {"type": "object", "additionalProperties": {"type": "string"}},
        "description": "metadata[key]=value pairs the completions must all have",
    },
]
_UPDATE_BODY = {
    "required": True,
    "content": {"application/json": {"schema": MetadataUpdate.model_json_schema()}},
}


def _store(request: Request) -> CompletionStore:
    return request.app.state.store


def _project(request: Request) -> str:
    return request.state.project  # set by the auth dependency of every /v1 route


async def _found(request: Request, completion_id: str) -> StoredCompletion:
    record = await asyncio.to_thread(_store(request).get, completion_id, _project(request))
    if record is None:
        raise _not_found(completion_id)
    return record


@router.get(
    "/v1/chat/completions",
    openapi_extra={"parameters": _LIST_PARAMETERS},
    responses=openapi.answers(openapi.ChatCompletionList, 400, 401),
)
async def list_chat_completions(request: Request) -> JSONResponse:
    params = request.query_params
    metadata = tuple(
        (key[len("metadata[") : -1], value)
        for key, value in params.multi_items()
        if key.startswith("metadata[") and key.endswith("]")
    )
    query = ListQuery(
        project=_project(request),
        after=params.get("after") or None,
        limit=_limit(params.get("limit")),
        order=_order(params.get("order")),
        model=params.get("model") or None,
        metadata=metadata,
    )
    page = await asyncio.to_thread(_store(request).list, query)
    return _list([stored_object(r) for r in page.items], page.has_more)


@router.get("/v1/chat/completions/{completion_id}", responses=openapi.answers(ChatCompletion, 401, 404))
async def retrieve_chat_completion(completion_id: str, request: Request) -> JSONResponse:
    return JSONResponse(stored_object(await _found(request, completion_id)))


@router.get(
    "/v1/chat/completions/{completion_id}/messages",
    openapi_extra={"parameters": _PAGE_PARAMETERS},
    responses=openapi.answers(openapi.ChatCompletionMessageList, 400, 401, 404),
)
async def list_chat_completion_messages(completion_id: str, request: Request) -> JSONResponse:
    record = await _found(request, completion_id)
    params = request.query_params
    items = stored_messages(record)
    if _order(params.get("order")) == "desc":
        items.reverse()
    after = params.get("after")
    if after:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise InvalidRequest(
                f"No message with id '{printable(after)}' in this completion.", param="after"
            )
        items = items[ids.index(after) + 1 :]
    limit = _limit(params.get("limit"))
    return _list(items[:limit], len(items) > limit)


@router.post(
    "/v1/chat/completions/{completion_id}",
    openapi_extra={"requestBody": _UPDATE_BODY},
    responses=openapi.answers(ChatCompletion, 400, 401, 404),
)
async def update_chat_completion(completion_id: str, request: Request) -> JSONResponse:
    try:
        body = MetadataUpdate.model_validate_json(await request.body())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "metadata"
        raise InvalidRequest(f"Invalid '{where}': {first['msg']}", param=where) from exc
    updated = await asyncio.to_thread(
        _store(request).update_metadata, completion_id, _project(request), body.metadata or {}
    )
    if updated is None:
        raise _not_found(completion_id)
    return JSONResponse(stored_object(updated))


@router.delete(
    "/v1/chat/completions/{completion_id}", responses=openapi.answers(ChatCompletionDeleted, 401, 404)
)
async def delete_chat_completion(completion_id: str, request: Request) -> JSONResponse:
    deleted = await asyncio.to_thread(_store(request).delete, completion_id, _project(request))
    if not deleted:
        raise _not_found(completion_id)
    return JSONResponse({"id": completion_id, "object": "chat.completion.deleted", "deleted": True})


def _not_found(completion_id: str) -> NotFound:
    """Also what another project's completion looks like."""
    return NotFound(f"No chat completion found with id '{printable(completion_id)}'.", param="completion_id")


def _list(data: list[dict[str, Any]], has_more: bool) -> JSONResponse:
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more,
        }
    )


def _limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return 20
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_LIMIT:
        raise InvalidRequest(
            f"Invalid 'limit': {raw!r}; it must be an integer from 1 to {MAX_LIMIT}.", param="limit"
        )
    return value


def _order(raw: str | None) -> Literal["asc", "desc"]:
    if raw == "desc":
        return "desc"
    if raw in (None, "", "asc"):
        return "asc"
    raise InvalidRequest(f"Invalid 'order': {raw!r}; it must be 'asc' or 'desc'.", param="order")
