"""What /openapi.json says each route answers: the SDK's own objects (so a generated client, or a
validator, reads the same shapes the openai SDK does) and OpenAI's error body for each status."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel, ConfigDict


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ChatCompletionList(BaseModel):
    object: Literal["list"]
    data: list[ChatCompletion]
    first_id: str | None
    last_id: str | None
    has_more: bool


class StoredMessage(BaseModel):
    """One message of a stored completion's request, as OpenAI lists them: the message as it was
    sent (any role, its other fields kept), with an id, its text, and its parts."""

    model_config = ConfigDict(extra="allow")

    id: str
    role: Literal["developer", "system", "user", "assistant", "tool", "function"]
    content: str | None
    name: str | None = None
    content_parts: list[dict[str, Any]] | None = None


class ChatCompletionMessageList(BaseModel):
    object: Literal["list"]
    data: list[StoredMessage]
    first_id: str | None
    last_id: str | None
    has_more: bool


_ERRORS = {
    400: "invalid request: the field is named in `param`",
    401: "no API key, or a wrong one",
    403: "the key may not do this",
    404: "no such model or completion",
    409: "the model is busy",
    429: "busy: retry after `Retry-After` seconds",
    503: "loading or shutting down",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse, "description": _ERRORS[status]} for status in statuses}


def answers(model: type[BaseModel], *statuses: int) -> dict[int | str, dict[str, Any]]:
    return {200: {"model": model, "description": "OK"}, **errors(*statuses)}


CHAT_COMPLETION: dict[int | str, dict[str, Any]] = {
    200: {
        "model": ChatCompletion,
        "description": "the completion; with `stream: true`, server-sent events of chat.completion.chunk "
        "objects ending with `data: [DONE]`",
        "content": {
            "text/event-stream": {
                "schema": {"$ref": "#/components/schemas/ChatCompletionChunk"},
            }
        },
    },
    **errors(400, 401, 404, 429, 503),
}


def install(app: FastAPI) -> None:
    """The generated document, with the schemas no route returns as JSON (the stream's chunk)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        # Its parts under names of their own: the chunk's Choice is not the completion's.
        chunk = ChatCompletionChunk.model_json_schema(
            ref_template="#/components/schemas/ChatCompletionChunk.{model}"
        )
        for name, definition in chunk.pop("$defs", {}).items():
            schemas[f"ChatCompletionChunk.{name}"] = definition
        schemas["ChatCompletionChunk"] = chunk
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
