"""GET /health: 200 once every model is loaded; 503 before, if loading failed, or while draining."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from server.chat.registry import ModelRegistry

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    registry: ModelRegistry = request.app.state.registry
    if request.app.state.lifecycle.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    if registry.ready:
        return JSONResponse({"status": "ok", "models": registry.configured_ids})
    if registry.failure:
        return JSONResponse({"status": "failed", "error": registry.failure}, status_code=503)
    return JSONResponse({"status": "loading"}, status_code=503)
