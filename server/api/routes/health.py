"""GET /health: 200 once the start-up models are loaded (on-demand ones need not be); 503 before,
if loading them failed, or while draining. The body gives every model's state."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from server.chat.registry import ModelRegistry, ModelSlot, ModelState

router = APIRouter()


def model_health(slot: ModelSlot) -> dict[str, Any]:
    out: dict[str, Any] = {"state": slot.state.value}
    if slot.state is ModelState.LOADING:
        out["phase"] = slot.phase
        out["loading_for_s"] = round(time.monotonic() - slot.load_started, 1)
    if slot.state is ModelState.FAILED:
        out["error"] = slot.error
    return out


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    registry: ModelRegistry = request.app.state.registry
    models = {slot.spec.id: model_health(slot) for slot in registry.slots()}
    if request.app.state.lifecycle.draining:
        return JSONResponse({"status": "draining", "models": models}, status_code=503)
    if registry.ready:
        return JSONResponse({"status": "ok", "models": models})
    if registry.failure:
        return JSONResponse(
            {"status": "failed", "error": registry.failure, "models": models}, status_code=503
        )
    return JSONResponse({"status": "loading", "models": models}, status_code=503)
