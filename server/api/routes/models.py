"""GET /v1/models and /v1/models/{id}: OpenAI's fields, and each model's state and capabilities in
extra fields; POST /v1/models/{id}/load and /unload for admin keys."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from openai.types import Model
from pydantic import BaseModel

from server.api import openapi
from server.chat.registry import ModelRegistry, ModelSlot, ModelState
from server.protocol.errors import Conflict, PermissionDenied

router = APIRouter()
OWNER = "openweights-server"


class ModelList(BaseModel):
    object: str = "list"
    data: list[Model]


def describe(slot: ModelSlot, name: str) -> Model:
    """OpenAI's Model, with what a client choosing a model wants to know beside it."""
    served = slot.served
    extra: dict[str, Any] = {
        "state": slot.state.value,
        "loaded": slot.state is ModelState.READY,
        "load": "startup" if slot.at_startup else "on_demand",
        "keep_alive": -1 if slot.keep_alive_s is None else slot.keep_alive_s,
        "aliases": list(slot.spec.aliases),
    }
    if name != slot.spec.id:
        extra["alias_of"] = slot.spec.id
    if slot.state is ModelState.LOADING:
        extra["phase"] = slot.phase
    if slot.state is ModelState.FAILED:
        extra["error"] = slot.error
    if served is not None:
        extra.update(
            context_length=served.limits.context_length,
            tools=True,
            tool_format=served.tool_parser.name,
            reasoning=served.reasoning.format,
            input_modalities=list(served.input_modalities),
            quantization=served.quantization,
            device=served.device,
            memory_bytes=served.footprint_bytes,
        )
    else:  # what is known before loading it
        extra.update(context_length=slot.spec.context_length, quantization=slot.spec.quantization)
    created = served.created if served is not None else 0
    return Model(id=name, object="model", created=created, owned_by=OWNER, **extra)


@router.get("/v1/models", response_model=ModelList, responses=openapi.errors(401))
async def list_models(request: Request) -> JSONResponse:
    registry: ModelRegistry = request.app.state.registry
    listing = ModelList(data=[describe(registry.slot(name), name) for name in registry.names])
    return JSONResponse(listing.model_dump(exclude_none=True))


@router.get("/v1/models/{model_id:path}", response_model=Model, responses=openapi.errors(401, 404))
async def retrieve_model(model_id: str, request: Request) -> JSONResponse:
    registry: ModelRegistry = request.app.state.registry
    return JSONResponse(describe(registry.slot(model_id), model_id).model_dump(exclude_none=True))


def _require_admin(request: Request) -> None:
    if not getattr(request.state, "admin", False):
        raise PermissionDenied(
            "Loading and unloading models needs an admin key (`admin: true` in server.api_keys_file)."
        )


@router.post(
    "/v1/models/{model_id:path}/load", response_model=Model, responses=openapi.errors(401, 403, 404, 429)
)
async def load_model(model_id: str, request: Request) -> JSONResponse:
    """Starts loading (202; poll GET /v1/models/{id} or /health for its state)."""
    _require_admin(request)
    registry: ModelRegistry = request.app.state.registry
    slot = registry.load(model_id)
    status = 200 if slot.state is ModelState.READY else 202
    return JSONResponse(describe(slot, model_id).model_dump(exclude_none=True), status_code=status)


@router.post(
    "/v1/models/{model_id:path}/unload", response_model=Model, responses=openapi.errors(401, 403, 404, 409)
)
async def unload_model(model_id: str, request: Request) -> JSONResponse:
    """Unloads now; 409 while requests are using it or it is loading."""
    _require_admin(request)
    registry: ModelRegistry = request.app.state.registry
    if not await asyncio.to_thread(registry.unload, model_id):  # stopping an engine blocks
        raise Conflict(f"The model '{model_id}' is loading or serving requests; unload it once it is idle.")
    return JSONResponse(describe(registry.slot(model_id), model_id).model_dump(exclude_none=True))
