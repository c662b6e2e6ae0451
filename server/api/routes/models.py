"""GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from openai.types import Model
from pydantic import BaseModel

from server.chat.registry import ModelRegistry
from server.protocol.errors import ModelNotFound

router = APIRouter()
OWNER = "openweights-server"


class ModelList(BaseModel):
    object: str = "list"
    data: list[Model]


def _model(registry: ModelRegistry, model_id: str) -> Model:
    served = {m.spec.id: m for m in registry.served()}
    if model_id not in served:
        return Model(id=model_id, object="model", created=0, owned_by=OWNER)
    model = served[model_id]
    # Beside OpenAI's fields: what the model takes ("text", "image", "audio").
    return Model(
        id=model_id,
        object="model",
        created=model.created,
        owned_by=OWNER,
        input_modalities=list(model.input_modalities),  # type: ignore[call-arg]
    )


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> JSONResponse:
    registry: ModelRegistry = request.app.state.registry
    listing = ModelList(data=[_model(registry, model_id) for model_id in registry.configured_ids])
    return JSONResponse(listing.model_dump(exclude_none=True))


@router.get("/v1/models/{model_id:path}", response_model=Model)
async def retrieve_model(model_id: str, request: Request) -> JSONResponse:
    registry: ModelRegistry = request.app.state.registry
    if model_id not in registry.configured_ids:
        raise ModelNotFound(model_id)
    return JSONResponse(_model(registry, model_id).model_dump(exclude_none=True))
